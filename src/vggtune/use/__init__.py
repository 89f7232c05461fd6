"""A trained model at work: loading it and predicting (``inference``), evaluating on labelled images
(``evaluation``), and exporting to ONNX / TorchScript (``export``).

May import: ``vggtune.core``, ``vggtune.model``, ``vggtune.data``. Never training, inspect or tasks.
"""
