"""A trained model at work: loading it and predicting (``inference``), evaluating on labelled images
(``evaluation``), exporting to ONNX / TorchScript (``export``), int8 and bf16 versions (``quantize``), the
held-out images a format is judged on (``heldout``) and timing a format against the CPU's peak
(``benchmark``).

May import: ``vggtune.core``, ``vggtune.model``, ``vggtune.data``. Never training, inspect or tasks.
"""
