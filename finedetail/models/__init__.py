"""Model backends behind one protocol (``base``). Heavy modules (torch, transformers, segment_anything) are imported
lazily by ``build_models`` so that ``import finedetail.models`` stays light."""
