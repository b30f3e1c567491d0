"""``local_embeddings``: BERT sentence-embedding models run in-process by onnxruntime, no torch.

``weights`` finds a model's files and reads its settings, ``graph`` builds
(and caches) its ONNX graph from the safetensors, ``engine`` loads it once
per process, ``batcher`` groups concurrent requests into passes on a bounded
thread pool, ``wire`` is the OpenAI format, ``adapter`` ties them together.
"""
