"""Serving a trained model over HTTP: LitServe's API (``api``), the model backends it runs requests
through (``backends``: a checkpoint in PyTorch, an exported ONNX file in onnxruntime or TorchScript file;
``choice``: ``backend=auto`` and ``precision``), how a request body becomes images (``requests``, ``http``)
and the server around them (``server``, ``page.html``; overload and dead workers: ``faults``).

May import: core, model, data, use, inspect (the inference and Grad-CAM code ``predict`` and
``explain`` use). Only ``vggtune.tasks.serve`` and the command line import it.
"""
