"""Build, load and export backbones.

A backbone maps images (B, C, H, W) to features (B, D) (or (B, D, 1, 1), which every user
flattens). Backbones come from a lightly recipe's Lightning checkpoint (the module names it
``self.backbone``, so its weights sit under ``state_dict["backbone.*"]``), from a plain
``state_dict`` file, or from an ``nn.Module`` such as a torchvision model. Architecture names
(:data:`KNOWN_ARCHITECTURES`) say which module a checkpoint's weights go into; the command line
passes ``--architecture`` straight to :func:`load_backbone`. ``export_backbone`` writes the
backbone-only ``state_dict`` that every other part of the project reads.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.vision_transformer import VisionTransformer

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
#: Where a teacher-student module (lightly_grpo's DINO) keeps its momentum teacher's backbone.
TEACHER_BACKBONE_PREFIX = "teacher_backbone."
KNOWN_ARCHITECTURES = (
    "resnet18_small",
    "resnet18_small_cifar",
    "vit_small",
    "torchvision:<name>",
    "lightly:<torchvision resnet name>",
)
# torchvision families whose children are stem, stages, avgpool, fc: lightly's examples keep
# all but the last child in an nn.Sequential.
_RESNET_FAMILIES = ("resnet", "resnext", "wide_resnet")
# Classifier attribute names of torchvision classification models, most common first.
_HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
# Harmless non-tensor types that Lightning checkpoints can hold (e.g. a Path saved by
# `save_hyperparameters`). Allow-listing them keeps `weights_only=True` loading usable.
_SAFE_CHECKPOINT_GLOBALS: list[Any] = [
    PosixPath,
    WindowsPath,
    PurePosixPath,
    PureWindowsPath,
]
_MAX_LISTED_KEYS = 10


# --------------------------------------------------------------------------- build


def resnet18_small(in_channels: int = 1, stem: str = "imagenet") -> torchvision.models.ResNet:
    """A torchvision ResNet-18 (random init) for small images, returning (B, 512) features.

    Args:
        in_channels: Channels of the input images.
        stem: ``"imagenet"`` keeps the 7x7 stride-2 convolution and the max pool (about
            10x cheaper on small images); ``"cifar"`` uses a 3x3 stride-1 convolution and
            no max pool (more accurate on 28-32 pixel images, much slower on CPU).

    Examples:
        >>> backbone = resnet18_small(in_channels=1, stem="cifar")
        >>> backbone(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 512])
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    model = torchvision.models.resnet18(weights=None)
    if stem == "imagenet":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    # Same init torchvision gives its own convolutions.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Identity()
    return model


class SmallViT(VisionTransformer):
    """torchvision's ``VisionTransformer`` that also embeds images of other sizes.

    The position embeddings learnt for the ``image_size`` grid are interpolated (bicubic) to the
    patch grid of the input, as DINO's own ViT does, so one backbone takes the full-size global
    views and the smaller local views. The patch convolution floors, so the border pixels that do
    not fill a whole patch are dropped. Returns the class token's features, (B, hidden_dim).

    Examples:
        >>> model = vit_small(in_channels=1, image_size=28, patch_size=4)
        >>> model(torch.zeros(2, 1, 28, 28)).shape, model(torch.zeros(2, 1, 14, 14)).shape
        (torch.Size([2, 192]), torch.Size([2, 192]))
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or min(x.shape[-2:]) < self.patch_size:
            raise ValueError(
                f"SmallViT needs (B, C, H, W) images of at least {self.patch_size} pixels (the "
                f"patch size) per side, got shape {tuple(x.shape)}"
            )
        patches = self.conv_proj(x)  # (B, hidden, grid_h, grid_w)
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self._position_embedding(patches.shape[-2], patches.shape[-1])
        # The encoder's own forward adds the native-size embedding; run its parts instead.
        encoder = self.encoder
        tokens = encoder.ln(encoder.layers(encoder.dropout(tokens)))
        return self.heads(tokens[:, 0])

    def _position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        embedding: Tensor = self.encoder.pos_embedding  # (1, 1 + native**2, hidden)
        native = self.image_size // self.patch_size
        if (grid_h, grid_w) == (native, native):
            return embedding
        cls_token, patches = embedding[:, :1], embedding[:, 1:]
        patches = patches.reshape(1, native, native, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls_token, patches.flatten(2).transpose(1, 2)], dim=1)


def vit_small(
    in_channels: int = 1,
    image_size: int = 28,
    patch_size: int = 4,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 192,
    mlp_dim: int = 768,
) -> SmallViT:
    """A small torchvision Vision Transformer (random init) for 28 px images: (B, hidden_dim).

    Far smaller than the ViT-S of the DINO paper (4 layers, not 12; width 192, not 384) so that
    it trains on a CPU. ``image_size`` is the size the position embeddings are learnt for
    (Fashion-MNIST's native 28 px); other input sizes work through interpolated embeddings (see
    :class:`SmallViT`), so ``--input-size`` need not be 28, though 28 is the natural choice.

    Args:
        in_channels: Channels of the input images (the patch convolution is built for them).
        image_size: Side of the images the position embeddings are laid out for; a multiple of
            ``patch_size``.
        patch_size: Side of the square patches.
        num_layers: Transformer blocks.
        num_heads: Attention heads per block (must divide ``hidden_dim``).
        hidden_dim: Token width, which is the feature dimension.
        mlp_dim: Hidden width of each block's MLP.

    Raises:
        ValueError: For ``in_channels < 1`` or an ``image_size`` that is not a multiple of
            ``patch_size``.

    Examples:
        >>> vit_small(in_channels=3)(torch.zeros(2, 3, 28, 28)).shape
        torch.Size([2, 192])
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(
            f"image_size must be a multiple of patch_size, got image_size={image_size}, "
            f"patch_size={patch_size}"
        )
    model = SmallViT(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    model.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
    # Same init torchvision gives its own patch convolution.
    nn.init.trunc_normal_(model.conv_proj.weight, std=(1 / (in_channels * patch_size**2)) ** 0.5)
    nn.init.zeros_(model.conv_proj.bias)
    model.heads = nn.Identity()
    return model


@torch.no_grad()
def backbone_output_dim(module: nn.Module, input_shape: tuple[int, ...] = (1, 32, 32)) -> int:
    """Measures a backbone's feature dimension with one dummy forward pass.

    The pass runs in eval mode (BatchNorm statistics stay untouched) and the module's
    train/eval mode is restored afterwards.

    Args:
        module: The backbone.
        input_shape: Shape of one input image, (C, H, W).

    Examples:
        >>> backbone_output_dim(resnet18_small(), (1, 32, 32))
        512
    """
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        out = module(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor):
        raise ValueError(f"Backbone returned {type(out).__name__}, expected a Tensor")
    return int(out.flatten(1).shape[1])


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def strip_classifier(model: nn.Module) -> nn.Module:
    """Replaces the final classification layer of a torchvision model by ``nn.Identity``.

    Looks for the head under ``fc``, ``classifier``, ``heads`` or ``head``; a ``Linear``
    head is replaced, and in a ``Sequential`` head its last ``Linear`` (or, for
    SqueezeNet, its last ``Conv2d``) is, so pooling/flattening before it stays.
    The model is modified in place and returned.

    Raises:
        ValueError: If no classifier layer is found.

    Examples:
        >>> model = strip_classifier(torchvision.models.resnet34(weights=None))
        >>> isinstance(model.fc, nn.Identity)
        True
    """
    for attr in _HEAD_ATTRIBUTES:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Identity):
            return model
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        if isinstance(head, nn.Module):
            for layer_type in (nn.Linear, nn.Conv2d):
                names = [n for n, m in head.named_modules() if isinstance(m, layer_type)]
                if names:
                    _set_submodule(head, names[-1], nn.Identity())
                    return model
    raise ValueError(
        f"Cannot find the classifier of {type(model).__name__}: none of the attributes "
        f"{_HEAD_ATTRIBUTES} holds a Linear layer"
    )


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    # Models built for RGB get their first 3-channel convolution rebuilt with the same
    # geometry; covers ResNets (conv1) and most other torchvision families.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            if module.groups != 1:
                break
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            _set_submodule(model, name, new)
            return
    raise ValueError(
        f"Cannot adapt {type(model).__name__} to {in_channels} input channels: "
        "no 3-channel first convolution found"
    )


def _torchvision_model(name: str, architecture: str, **kwargs: Any) -> nn.Module:
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(
            f"Unknown torchvision classification model {name!r} in {architecture!r}; "
            f"available: {', '.join(available)}"
        )
    return torchvision.models.get_model(name, weights=None, **kwargs)


def lightly_resnet(name: str = "resnet18", in_channels: int = 3, **kwargs: Any) -> nn.Sequential:
    """The backbone of lightly's examples: a torchvision ResNet without its ``fc``, as Sequential.

    lightly's examples build ``nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])``
    and keep it as ``self.backbone``, so their checkpoints hold ``backbone.0.weight`` (the first
    convolution), ``backbone.1.*`` (its BatchNorm), ... The output is (B, D, 1, 1).

    Args:
        name: A torchvision ResNet, ResNeXt or Wide ResNet (e.g. ``"resnet50"``).
        in_channels: Channels of the input images; the first convolution is rebuilt with the
            same geometry when this is not 3.
        **kwargs: Passed to ``torchvision.models.get_model``.

    Raises:
        ValueError: If ``name`` is not a torchvision ResNet-family model.

    Examples:
        >>> backbone = lightly_resnet("resnet18", in_channels=1)
        >>> backbone(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 512, 1, 1])
        >>> next(iter(backbone.state_dict()))
        '0.weight'
    """
    if not name.startswith(_RESNET_FAMILIES):
        resnets = [
            n
            for n in torchvision.models.list_models(module=torchvision.models)
            if n.startswith(_RESNET_FAMILIES)
        ]
        raise ValueError(
            f"'lightly:{name}' needs a torchvision ResNet-family model; available: "
            f"{', '.join(resnets)}"
        )
    model = _torchvision_model(name, f"lightly:{name}", **kwargs)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    return nn.Sequential(*list(model.children())[:-1])


def build_backbone(
    architecture: str = "resnet18_small", in_channels: int = 1, **kwargs: Any
) -> nn.Module:
    """Builds a randomly initialised backbone that returns (B, D) or (B, D, 1, 1) features.

    Args:
        architecture: One of :data:`KNOWN_ARCHITECTURES`:

            - ``"resnet18_small"`` (7x7 stem) or ``"resnet18_small_cifar"`` (3x3 stem);
            - ``"vit_small"``, a 4-layer Vision Transformer for 28 px images, see
              :func:`vit_small`;
            - ``"torchvision:<name>"`` for any torchvision classification model (e.g.
              ``"torchvision:resnet50"``), whose classifier is replaced by ``nn.Identity``;
            - ``"lightly:<name>"`` for the ``nn.Sequential`` ResNet of lightly's examples
              (e.g. ``"lightly:resnet18"``), see :func:`lightly_resnet`.
        in_channels: Channels of the input images; torchvision models get their first
            convolution rebuilt when this is not 3.
        **kwargs: Passed to ``resnet18_small``, ``vit_small`` or ``torchvision.models.get_model``.

    Raises:
        ValueError: For an unknown architecture.

    Examples:
        >>> build_backbone("torchvision:resnet34", in_channels=1)(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 512])
        >>> build_backbone("lightly:resnet18", in_channels=3)(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 512, 1, 1])
    """
    if architecture == "resnet18_small":
        return resnet18_small(in_channels, **kwargs)
    if architecture == "resnet18_small_cifar":
        return resnet18_small(in_channels, stem="cifar", **kwargs)
    if architecture == "vit_small":
        return vit_small(in_channels, **kwargs)
    source, _, name = architecture.partition(":")
    if source == "lightly" and name:
        return lightly_resnet(name, in_channels, **kwargs)
    if source == "torchvision" and name:
        model = _torchvision_model(name, architecture, **kwargs)
        strip_classifier(model)
        if in_channels != 3:
            _adapt_first_conv(model, in_channels)
        return model
    raise ValueError(
        f"Unknown architecture {architecture!r}; known: {', '.join(KNOWN_ARCHITECTURES)}"
    )


# --------------------------------------------------------------------------- state dicts


def extract_backbone_state_dict(
    state_dict: Mapping[str, Tensor], prefix: str = BACKBONE_PREFIX
) -> dict[str, Tensor]:
    """Returns the entries whose key starts with ``prefix``, with the prefix removed.

    Args:
        state_dict: E.g. ``checkpoint["state_dict"]`` of a lightly recipe module.
        prefix: Key prefix of the backbone; ``""`` returns a copy of everything.

    Raises:
        ValueError: If no key starts with ``prefix``.

    Examples:
        >>> extract_backbone_state_dict({"backbone.w": torch.ones(1), "head.w": torch.ones(1)})
        {'w': tensor([1.])}
    """
    extracted = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not extracted:
        keys = list(state_dict)
        raise ValueError(
            f"No key starts with prefix {prefix!r} ({len(keys)} keys, first: "
            f"{keys[:_MAX_LISTED_KEYS]})"
        )
    return extracted


def _auto_extract(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # A teacher-student module (DINO) is evaluated through its momentum teacher, as DINO does.
    if any(k.startswith(TEACHER_BACKBONE_PREFIX) for k in state_dict):
        return extract_backbone_state_dict(state_dict, TEACHER_BACKBONE_PREFIX)
    # A Lightning / lightly module names its backbone `backbone`; DDP wraps in `module.`.
    if any(k.startswith(BACKBONE_PREFIX) for k in state_dict):
        return extract_backbone_state_dict(state_dict, BACKBONE_PREFIX)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return _auto_extract(extract_backbone_state_dict(state_dict, "module."))
    return dict(state_dict)


def _torch_load(path: Path, map_location: Any, trusted: bool) -> Any:
    if trusted:
        # Explicit opt-in: full unpickling can run code stored in the file.
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Cannot load checkpoint '{path}' with torch.load(weights_only=True): {err}. "
            "If it is a valid checkpoint from a trusted source that holds other Python "
            "objects, pass trusted=True (--trust-checkpoint on the command line)."
        ) from err
    except (RuntimeError, EOFError, KeyError, IndexError, AttributeError, TypeError) as err:
        # torch.load on a file that is not a checkpoint (text, a truncated download) fails
        # from deep inside the unpickler with whatever it tripped over.
        raise ValueError(
            f"Cannot read checkpoint '{path}': not a PyTorch checkpoint or a damaged one "
            f"({type(err).__name__}: {err})"
        ) from err


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    if len(keys) <= _MAX_LISTED_KEYS:
        return f"{len(keys)} [{shown}]"
    # The first keys often all sit in one block; name every module involved as well.
    modules = list(dict.fromkeys(".".join(k.split(".")[:2]) for k in keys))
    listed = ", ".join(modules[: 3 * _MAX_LISTED_KEYS])
    more = ", ..." if len(modules) > 3 * _MAX_LISTED_KEYS else ""
    return (
        f"{len(keys)} [{shown}, ... ({len(keys) - _MAX_LISTED_KEYS} more)] "
        f"in modules [{listed}{more}]"
    )


def _check_keys(
    module: nn.Module, state_dict: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    return missing, unexpected, mismatched


def load_backbone(
    source: str | os.PathLike[str] | nn.Module,
    architecture: str | nn.Module = "resnet18_small",
    *,
    in_channels: int = 1,
    prefix: str | None = None,
    strict: bool = True,
    map_location: Any = "cpu",
    strip_head: bool = True,
    trusted: bool = False,
) -> nn.Module:
    """Loads a backbone from a checkpoint, a ``state_dict`` file, or a module.

    Args:
        source: One of
            - a Lightning ``.ckpt`` (a dict with ``"state_dict"``), e.g. of a lightly SimCLR
              recipe whose module holds ``self.backbone``;
            - a file saved with ``torch.save(model.state_dict())``, with or without a
              ``backbone.`` prefix (``export_backbone`` writes one without);
            - an ``nn.Module``, returned (in eval mode) with a torchvision model's
              classifier replaced by ``nn.Identity`` when ``strip_head`` is True; it is
              modified in place.
        architecture: A name for :func:`build_backbone` (one of :data:`KNOWN_ARCHITECTURES`;
            ``"lightly:resnet18"`` for a checkpoint of lightly's examples, whose backbone is
            ``nn.Sequential(*resnet18().children()[:-1])``) or a module to load the weights
            into.
        in_channels: Input channels of the built architecture.
        prefix: Key prefix of the backbone weights (e.g. ``"backbone."`` for a DINO
            checkpoint's student). By default the keys under ``teacher_backbone.`` (a DINO
            checkpoint's teacher) are taken if there are any, else those under ``backbone.``,
            else all keys.
        strict: If True, any missing, unexpected or wrongly shaped key is an error; if
            False those are skipped with a warning in the log.
        map_location: Passed to ``torch.load``.
        strip_head: See ``source``.
        trusted: Load with ``weights_only=False``. Only for files from a trusted source:
            unpickling can run arbitrary code.

    Returns:
        The backbone in eval mode.

    Raises:
        FileNotFoundError: If ``source`` is a path that does not exist.
        ValueError: If the file holds no state dict or the keys/shapes do not match; the
            message names the checkpoint and lists the offending keys.

    Examples:
        >>> backbone = load_backbone("runs/simclr/simclr.ckpt", "resnet18_small")  # doctest: +SKIP
        >>> backbone = load_backbone("ex.ckpt", "lightly:resnet18", in_channels=3)  # doctest: +SKIP
        >>> backbone = load_backbone(torchvision.models.resnet50(weights=None))
    """
    if isinstance(source, nn.Module):
        if strip_head and type(source).__module__.startswith("torchvision.models"):
            strip_classifier(source)
        return source.eval()

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Backbone checkpoint not found: '{path}'")
    obj = _torch_load(path, map_location, trusted)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state_dict = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state_dict = obj
    else:
        keys = list(obj)[:_MAX_LISTED_KEYS] if isinstance(obj, Mapping) else None
        raise ValueError(
            f"'{path}' holds neither a Lightning checkpoint (a dict with 'state_dict') nor a "
            f"state_dict of tensors (got {type(obj).__name__}"
            + (f" with keys {keys})" if keys is not None else ")")
        )
    state_dict = (
        _auto_extract(state_dict)
        if prefix is None
        else extract_backbone_state_dict(state_dict, prefix)
    )

    if isinstance(architecture, nn.Module):
        module = architecture
        arch_name = type(architecture).__name__
    else:
        module = build_backbone(architecture, in_channels)
        arch_name = repr(architecture)
    missing, unexpected, mismatched = _check_keys(module, state_dict)
    if missing or unexpected or mismatched:
        details = (
            f"missing keys {_format_keys(missing)}; unexpected keys {_format_keys(unexpected)}; "
            f"shape mismatches {_format_keys(mismatched)}"
        )
        if strict:
            raise ValueError(
                f"Checkpoint '{path}' does not match architecture {arch_name} "
                f"(in_channels={in_channels}, prefix={prefix!r}): {details}. Check the "
                "architecture, in_channels and prefix, or pass strict=False."
            )
        logger.warning("Loading '%s' non-strictly into %s: %s", path, arch_name, details)
        skip = {m.split(":", 1)[0] for m in mismatched}
        state_dict = {k: v for k, v in state_dict.items() if k not in skip}
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        # A model whose every output is NaN would otherwise only show up after training.
        raise ValueError(f"Checkpoint '{path}' holds NaN or inf values in {_format_keys(bad)}")
    module.load_state_dict(state_dict, strict=strict)
    return module.eval()


def export_backbone(
    backbone: nn.Module | Mapping[str, Tensor],
    path: str | os.PathLike[str],
    *,
    prefix: str | None = None,
) -> Path:
    """Writes a backbone-only ``state_dict`` (keys without prefix) that ``load_backbone`` reads.

    Args:
        backbone: The backbone module, or a state dict (e.g. a Lightning module's) from
            which the backbone entries are taken as ``load_backbone`` would.
        path: Output file (``.pt``); parent directories are created. The file is replaced
            atomically: readers see the old file or the new one, never a partial write.
        prefix: For a state dict input, the backbone key prefix (see ``load_backbone``).

    Returns:
        The path written.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = export_backbone(resnet18_small(), Path(tmp) / "backbone.pt")
        ...     backbone = load_backbone(path, "resnet18_small")
        >>> backbone.training
        False
    """
    if isinstance(backbone, nn.Module):
        state_dict: Mapping[str, Tensor] = backbone.state_dict()
    elif prefix is None:
        state_dict = _auto_extract(backbone)
    else:
        state_dict = extract_backbone_state_dict(backbone, prefix)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed onto it: a crash while saving leaves the previous
    # file intact, never a truncated one. clone() gives each tensor its own storage.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # per process: no races
    try:
        torch.save({k: v.detach().cpu().clone() for k, v in state_dict.items()}, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


__all__ = [
    "BACKBONE_PREFIX",
    "KNOWN_ARCHITECTURES",
    "SmallViT",
    "backbone_output_dim",
    "build_backbone",
    "export_backbone",
    "extract_backbone_state_dict",
    "lightly_resnet",
    "load_backbone",
    "resnet18_small",
    "strip_classifier",
    "vit_small",
]
