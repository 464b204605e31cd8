"""The retrieval door: use a trained model.

model.py       load a run or an export (never unpickled); EmbeddingNet = trunk, embedder, L2 norm
images.py      image files/folders -> paths and labels; batched embedding (PML InferenceModel)
embeddings.py  embeddings on disk (safetensors / .npy) + JSON manifest
index.py       faiss index (any factory string), add, save/load with checks; PML FaissKNN search
retriever.py   Retriever: embed, add, search, save, load
grid.py        the retrieval grid figure
export.py      safetensors (timm-loadable) / ONNX / TorchScript + model card
commands.py    `pml-soproxy embed | index | search | export`
"""

from .embeddings import Embeddings, load_embeddings
from .export import export_model
from .index import Index
from .model import EmbeddingNet, LoadedModel, load_model
from .retriever import Hit, Retriever, SearchResult
