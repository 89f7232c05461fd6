"""Looking inside a network: Grad-CAM heatmaps and feature grids (``gradcam``), and 2-D maps of
embeddings with their scores and TensorBoard projector files (``embedding_maps``).

May import: ``vggtune.core``, ``vggtune.model``, ``vggtune.data``. Never training, use or tasks.
"""
