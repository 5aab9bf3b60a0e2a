"""The notebook's memory: text embeddings on our kernels (embedding.py) and the bank of recycled
semantic units (RSUs) kept in Qdrant (bank.py, segmentation.py). A feature layer: it uses the
families (the BERT encoder) and is used by the surfaces; the engine never imports it."""
