"""finedetail: keep the fine detail (fur, wires, vessels, thin roads) that one-pass segmentation loses.

The pure modules (``transforms``, ``tiling``, ``crops``, ``prompts``, ``ensemble``, ``postprocess``, ``metrics``,
``rle``, ``synthetic``, ``codecs``, ``pipeline``) need only numpy and OpenCV; model wrappers under
``finedetail.models`` import torch, transformers and segment_anything only when a backend is built.
Nothing in this package imports ray: the Ray job lives in the ``job`` package.
"""

__version__ = "0.1.0"
