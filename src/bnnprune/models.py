"""Model zoo with a registry. The zoo is one table of model specs (:data:`ZOO`, one
:class:`ZooModel` each) with one builder; every model takes ``width``, ``in_channels``,
``num_classes``, ``image_size``, ``pad_value`` and ``scale``; first and last layers are full
precision by default.

A model built here carries its architecture spec in ``model.arch`` (a plain dict), so a
checkpoint can rebuild it; pruned models are rebuilt from the same spec and then resized to
the shapes in their state_dict (:func:`resize_to_state_dict`).

Besides the zoo, a model can come from any importable **model factory** named
``package.module:name``: an ``nn.Module`` class, a function annotated ``-> nn.Module`` (or a
subclass), or one decorated with :func:`model_factory`. Its spec is the reference and its
keyword arguments (plain data), never pickled code. Since checkpoints name their factory and
a checkpoint file may come from anyone, bnnprune calls nothing else by name: no
standard-library callable, no unannotated function (``os:system`` is refused unread).
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from bnnprune.imports import import_from_spec, is_import_spec
from bnnprune.nn import PER_CHANNEL_TYPES, BinaryConv2d, BinaryLinear, RPReLU, RSign

__all__ = [
    "build_from_config",
    "MODELS",
    "ZOO",
    "ZooModel",
    "build_model",
    "check_plain_kwargs",
    "model_factory",
    "model_from_arch",
    "register_model",
    "resolve_factory",
    "resize_to_state_dict",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


_FACTORY_MARK = "__bnnprune_model_factory__"
_DATA_ARGS = ("in_channels", "num_classes", "image_size")  # what a dataset tells a factory


def model_factory(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Mark ``fn`` as a model factory that bnnprune may call by name (for factories without
    a ``-> nn.Module`` return annotation)."""
    setattr(fn, _FACTORY_MARK, True)
    return fn


def _returns_module(fn: Any) -> bool:
    """True when ``fn`` is an nn.Module class, is marked by :func:`model_factory`, or is
    annotated to return an nn.Module (sub)class."""
    if isinstance(fn, type):
        return issubclass(fn, nn.Module)
    if getattr(fn, _FACTORY_MARK, False):
        return True
    try:
        ret = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable annotations (TYPE_CHECKING names) or not a function
        return False
    return isinstance(ret, type) and issubclass(ret, nn.Module)


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """The model factory ``package.module:name`` names; ValueError (one line) when it cannot
    be imported or is not a model factory (see the module docstring for what qualifies)."""
    module = spec.partition(":")[0].split(".")[0]
    if module in sys.stdlib_module_names or module == "builtins":
        raise ValueError(f"model factory {spec!r}: {module} is a standard-library module, "
                         "not a model factory")
    fn = import_from_spec(spec, "model factory")
    if not callable(fn) or not _returns_module(fn):
        raise ValueError(
            f"{spec} is not a model factory: make it an nn.Module class, annotate the "
            "function '-> torch.nn.Module' or decorate it with @bnnprune.models.model_factory"
        )
    return fn


def check_plain_kwargs(kwargs: Any, what: str = "model kwargs") -> None:
    """ValueError unless ``kwargs`` is a dict of plain data (str keys; str, int, float, bool,
    None, lists and dicts of them): what a checkpoint stores and TOML or JSON can write."""
    def bad(x: Any) -> bool:
        if isinstance(x, dict):
            return any(not isinstance(k, str) or bad(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return any(bad(v) for v in x)
        return x is not None and not isinstance(x, (str, int, float, bool))

    if not isinstance(kwargs, dict) or bad(kwargs):
        raise ValueError(f"{what} must be a table of plain values (text, numbers, booleans, "
                         f"lists, tables), got {str(kwargs)[:120]}")


def build_from_config(cfg: Any, dataset: Any, seed: int) -> nn.Module:
    """The model a :class:`bnnprune.config.ModelConfig` names, sized for ``dataset``'s inputs
    and classes, initialised from ``seed``.

    A zoo model gets width, pad_value, scale and the dataset's shape, then ``cfg.kwargs``
    on top; a factory gets ``cfg.kwargs`` plus those of ``in_channels``, ``num_classes``
    and ``image_size`` that its signature names and ``cfg.kwargs`` does not set.
    """
    from bnnprune.seeding import seed_everything

    data = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes,
            "image_size": dataset.image_size}
    if is_import_spec(cfg.name):
        params = inspect.signature(resolve_factory(cfg.name)).parameters
        kwargs = {k: v for k, v in data.items() if k in params}
    else:
        kwargs = {"width": cfg.width, **data, "pad_value": cfg.pad_value, "scale": cfg.scale}
    seed_everything(seed)
    return build_model(cfg.name, **{**kwargs, **cfg.kwargs})


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model, or call the model factory ``package.module:name`` (see
    :func:`resolve_factory`); unknown names or arguments raise ValueError, and so does a
    factory that fails or returns no nn.Module. The spec goes to ``model.arch``."""
    check_plain_kwargs(kwargs)
    if is_import_spec(name):
        fn = resolve_factory(name)
        what = f"model factory {name}"
    elif name in MODELS:
        fn, what = MODELS[name], f"model {name!r}"
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))} "
                         "or name a factory as package.module:function")
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    bad = [] if takes_any else sorted(set(kwargs) - set(params))
    if bad:
        raise ValueError(f"{what} takes no argument(s) {bad}; it takes {sorted(params)}")
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"{what}: {e}") from None
    try:
        model = fn(**kwargs)
    except ValueError:
        raise
    except Exception as e:  # the factory's own code failed: one line (BNNPRUNE_DEBUG shows it)
        raise ValueError(f"{what} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} returned {type(model).__name__}, not a torch.nn.Module")
    model.arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def model_from_arch(
    arch: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """Rebuild a model from its spec; if a state_dict is given, resize to it and load it."""
    if not isinstance(arch, dict) or "name" not in arch:
        raise ValueError("architecture spec must be a dict with a 'name'")
    model = build_model(arch["name"], **dict(arch.get("kwargs", {})))
    if state_dict is not None:
        resize_to_state_dict(model, state_dict)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise ValueError(
                f"weights do not fit model {arch['name']!r}: "
                f"{first[1].strip() if len(first) > 1 else first[0]}"
            ) from None
    return model


@torch.no_grad()
def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Give every conv / linear / batch-norm the channel counts found in ``state_dict``.

    This is how a channel-pruned model is rebuilt from the unpruned spec: any model whose
    forward pass does not hard-code channel counts can be resized this way.
    """
    for name, m in model.named_modules():
        w = state_dict.get(f"{name}.weight" if name else "weight")
        if isinstance(m, nn.Conv2d) and w is not None and w.dim() == 4:
            out_c, in_pg = int(w.shape[0]), int(w.shape[1])
            if (out_c, in_pg) != tuple(m.weight.shape[:2]):
                if m.groups != 1:
                    raise ValueError(f"cannot resize grouped convolution {name!r}")
                m.in_channels, m.out_channels = in_pg, out_c
                m.weight = nn.Parameter(m.weight.new_zeros(w.shape))
                if m.bias is not None:
                    m.bias = nn.Parameter(m.bias.new_zeros(out_c))
        elif isinstance(m, nn.Linear) and w is not None and w.dim() == 2:
            if tuple(w.shape) != tuple(m.weight.shape):
                m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
                m.weight = nn.Parameter(m.weight.new_zeros(w.shape))
                if m.bias is not None:
                    m.bias = nn.Parameter(m.bias.new_zeros(w.shape[0]))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            rm = state_dict.get(f"{name}.running_mean")
            if rm is not None and rm.numel() != m.num_features:
                n = int(rm.numel())
                m.num_features = n
                if m.affine:
                    m.weight = nn.Parameter(m.weight.new_ones(n))
                    m.bias = nn.Parameter(m.bias.new_zeros(n))
                if m.track_running_stats:
                    m.running_mean = torch.zeros(n)
                    m.running_var = torch.ones(n)
        elif isinstance(m, (nn.PReLU, *PER_CHANNEL_TYPES)):
            for pname, p in list(m.named_parameters(recurse=False)):
                new = state_dict.get(f"{name}.{pname}" if name else pname)
                if new is not None and new.shape != p.shape:
                    setattr(m, pname, nn.Parameter(p.new_zeros(new.shape)))
            if isinstance(m, nn.PReLU):
                m.num_parameters = int(m.weight.numel())
    return model


# --------------------------------------------------------------------------- building blocks


def _bin_conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None, **bk: Any
) -> list[nn.Module]:
    pad = k // 2 if pad is None else pad
    return [BinaryConv2d(cin, cout, k, stride=stride, padding=pad, **bk), nn.BatchNorm2d(cout)]


def _fp_conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    # No ReLU: the next binary layer takes sign(), and sign(relu(x)) would be constant +1.
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]


def _named(layers: list[nn.Module]) -> nn.Sequential:
    """Sequential with readable names: conv1, bn1, pool1, ..., fc1, bnfc1 (binary: bconvN, bfcN)."""
    names: list[str] = []
    idx = {"conv": 0, "fc": 0}
    last = ""
    for m in layers:
        if isinstance(m, nn.Conv2d):
            idx["conv"] += 1
            stem = "bconv" if isinstance(m, BinaryConv2d) else "conv"
            names.append(f"{stem}{idx['conv']}")
            last = str(idx["conv"])
        elif isinstance(m, nn.Linear):
            idx["fc"] += 1
            names.append(f"{'bfc' if isinstance(m, BinaryLinear) else 'fc'}{idx['fc']}")
            last = f"fc{idx['fc']}"
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            names.append(f"bn{last}")
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            names.append(f"pool{idx['conv']}")
        else:
            names.append(type(m).__name__.lower())
    return nn.Sequential(OrderedDict(zip(names, layers)))


# --------------------------------------------------------------------------- zoo


@dataclass(frozen=True)
class Dims:
    """The six arguments every zoo model takes, checked on creation (ValueError, one line)."""

    width: float
    in_channels: int
    num_classes: int
    image_size: int
    pad_value: float
    scale: bool

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")

    def ch(self, c: int) -> int:
        """Channel count ``c`` of the paper-size model scaled by ``width`` (at least 1)."""
        return max(1, int(round(c * self.width)))

    @property
    def bk(self) -> dict[str, Any]:
        """Keyword arguments of every binary layer: padding value and XNOR-Net scale."""
        return {"pad_value": self.pad_value, "scale": self.scale}


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: how its layers follow from :class:`Dims`, and the input it is sized for
    when the caller names none. Calling it is the zoo's one builder: the six arguments by
    keyword (its ``__signature__`` lists them with this entry's defaults), checked, then
    ``layers``."""

    name: str
    layers: Callable[[Dims], nn.Module]
    doc: str
    in_channels: int = 3
    image_size: int = 32

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (channels, height, width) of one image this entry is sized for by default."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def __signature__(self) -> inspect.Signature:
        P = inspect.Parameter
        args = (("width", "float", 1.0), ("in_channels", "int", self.in_channels),
                ("num_classes", "int", 10), ("image_size", "int", self.image_size),
                ("pad_value", "float", 1.0), ("scale", "bool", False))
        return inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD, default=d, annotation=a)
                                  for n, a, d in args], return_annotation="nn.Module")

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        bound = self.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        return self.layers(Dims(**bound.arguments))


# A conv stack: ("F", out, k) fp conv+BN, ("B", out, k) binary conv+BN, or a module factory
# (a fresh pooling module per model).
Spec = tuple[Any, ...]
Head = Callable[[Dims, int], list[nn.Module]]  # the layers after Flatten, given its features


def _stack(spec: Spec, d: Dims) -> list[nn.Module]:
    """Conv layers from a compact spec; channel counts are scaled by ``width``."""
    layers: list[nn.Module] = []
    cin = d.in_channels
    for item in spec:
        if not isinstance(item, tuple):
            layers.append(item())
            continue
        kind, out, k = item
        cout = d.ch(out)
        layers += _fp_conv_bn(cin, cout, k) if kind == "F" else _bin_conv_bn(cin, cout, k, **d.bk)
        cin = cout
    return layers


def _sequential(features: Spec, head: Head) -> Callable[[Dims], nn.Module]:
    """A plain feed-forward model: the conv stack, Flatten, then ``head`` sized to it."""

    def layers(d: Dims) -> nn.Module:
        feats = _stack(features, d)
        with torch.no_grad():
            n = int(nn.Sequential(*feats)(torch.zeros(1, d.in_channels, d.image_size,
                                                      d.image_size)).numel())
        return _named([*feats, nn.Flatten(), *head(d, n)])

    return layers


def _linear_head(d: Dims, n: int) -> list[nn.Module]:
    """A full-precision classifier (VGG-Small, small)."""
    return [nn.Linear(n, d.num_classes)]


def _binary_fc_head(d: Dims, n: int) -> list[nn.Module]:
    """Two binary FC layers of 1024 (x width) with BN, then a full-precision classifier
    (BinaryNet, AlexNet)."""
    hidden = d.ch(1024)
    return [
        BinaryLinear(n, hidden, scale=d.scale),
        nn.BatchNorm1d(hidden),
        BinaryLinear(hidden, hidden, scale=d.scale),
        nn.BatchNorm1d(hidden),
        nn.Linear(hidden, d.num_classes),
    ]


_MP = partial(nn.MaxPool2d, 2)
_VGG: Spec = (("F", 128, 3), ("B", 128, 3), _MP, ("B", 256, 3), ("B", 256, 3), _MP,
              ("B", 512, 3), ("B", 512, 3), _MP)  # shared by BinaryNet and VGG-Small
_ALEXNET: Spec = (("F", 96, 5), _MP, ("B", 256, 5), _MP, ("B", 384, 3), ("B", 384, 3),
                  ("B", 256, 3), _MP)
_SMALL: Spec = (("F", 32, 3), ("B", 64, 3), _MP, ("B", 128, 3), _MP, ("B", 128, 3), _MP)
_NIN: Spec = (("F", 192, 5), ("B", 160, 1), ("B", 96, 1), partial(nn.MaxPool2d, 3, 2, 1),
              ("B", 192, 5), ("B", 192, 1), ("B", 192, 1), partial(nn.AvgPool2d, 3, 2, 1),
              ("B", 192, 3), ("B", 192, 1))


def _nin(d: Dims) -> nn.Module:
    """NIN: the conv stack, then a 1x1 fp classifier conv and global average pooling."""
    head = [nn.Conv2d(d.ch(192), d.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return _named(_stack(_NIN, d) + head)  # head first: the seeded initialisation's order


class BasicBlock(nn.Module):
    """Binary basic block with a real-valued shortcut: bn2(bconv2(bn1(bconv1(x)))) + sc(x).

    The block output width is coupled to the shortcut (residual coupling); the inner width
    (conv1's output) is free. Downsampling shortcuts are avgpool + full-precision 1x1 conv.
    """

    def __init__(self, cin: int, mid: int, cout: int, stride: int, **bk: Any) -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(cin, mid, 3, stride=stride, padding=1, **bk)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = BinaryConv2d(mid, cout, 3, stride=1, padding=1, **bk)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False)
                if stride != 1
                else nn.Identity(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)


class ResNet(nn.Module):
    def __init__(
        self, blocks: list[int], widths: list[int], in_channels: int, num_classes: int, **bk: Any
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (n, c) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(cin, c, c, stride, **bk))
                cin = c
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet18(d: Dims) -> nn.Module:
    widths = [d.ch(c) for c in (64, 128, 256, 512)]
    return ResNet([2, 2, 2, 2], widths, d.in_channels, d.num_classes, **d.bk)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Real-valued shortcut: identity, or avg-pool (stride) + 1x1 full-precision conv + BN."""
    pool = (nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride != 1
            else nn.Identity())
    if cin == cout:
        return pool
    return nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class BiRealUnit(nn.Module):
    """Bi-Real Net unit: ``bn(bconv3x3(sign(x))) + shortcut(x)``, one shortcut per binary conv."""

    def __init__(self, cin: int, cout: int, stride: int, **bk: Any) -> None:
        super().__init__()
        self.conv = BinaryConv2d(cin, cout, 3, stride=stride, padding=1, **bk)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


def _birealnet18(d: Dims) -> nn.Module:
    """The units of a stage share its width through their shortcuts: one channel group per
    stage."""
    widths = [d.ch(c) for c in (64, 128, 256, 512)]
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(d.in_channels, widths[0], 3, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(widths[0])),
    ]
    cin = widths[0]
    for i, c in enumerate(widths):
        units = []
        for j in range(4):
            stride = 2 if (i > 0 and j == 0) else 1
            units.append(BiRealUnit(cin, c, stride, **d.bk))
            cin = c
        layers.append((f"layer{i + 1}", nn.Sequential(*units)))
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(cin, d.num_classes))]
    return nn.Sequential(OrderedDict(layers))


class ReActBlock(nn.Module):
    """ReActNet-A block: RSign -> binary 3x3 -> BN, + shortcut, RPReLU; then RSign -> binary
    1x1 -> BN, + shortcut, RPReLU.

    Stride 2 is taken by the 3x3 conv (shortcut: avg-pool). Where the width grows, the 1x1
    part has a real-valued 1x1 conv + BN shortcut (ReActNet-A instead concatenates two 1x1
    convs that share one shortcut, which ties every stage to the stem's channels and leaves
    nothing prunable); each stage is then one channel group.
    """

    def __init__(self, cin: int, cout: int, stride: int, **bk: Any) -> None:
        super().__init__()
        self.sign1 = RSign(cin)
        self.conv3x3 = BinaryConv2d(cin, cin, 3, stride=stride, padding=1, **bk)
        self.bn1 = nn.BatchNorm2d(cin)
        self.shortcut1 = _shortcut(cin, cin, stride)
        self.act1 = RPReLU(cin)
        self.sign2 = RSign(cin)
        self.conv1x1 = BinaryConv2d(cin, cout, 1, **bk)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut2 = _shortcut(cin, cout, 1)
        self.act2 = RPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv3x3(self.sign1(x))) + self.shortcut1(x))
        return self.act2(self.bn2(self.conv1x1(self.sign2(x))) + self.shortcut2(x))


# ReActNet-A (MobileNet-V1 layout): (output channels, stride) of the 13 blocks
_REACTNET_A = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
               (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _reactnet(d: Dims) -> nn.Module:
    cin = d.ch(32)
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(d.in_channels, cin, 3, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(cin)),
    ]
    for i, (c, stride) in enumerate(_REACTNET_A):
        layers.append((f"block{i + 1}", ReActBlock(cin, d.ch(c), stride, **d.bk)))
        cin = d.ch(c)
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(cin, d.num_classes))]
    return nn.Sequential(OrderedDict(layers))


ZOO: tuple[ZooModel, ...] = (
    ZooModel("nin", _nin, "Binary Network-in-Network, the 9-convolution XNOR-Net CIFAR-10 "
             "layout."),
    ZooModel("binarynet", _sequential(_VGG, _binary_fc_head), "BinaryNet CIFAR-10 ConvNet: "
             "2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-1024FC-1024FC-10FC."),
    ZooModel("vgg_small", _sequential(_VGG, _linear_head), "VGG-Small (LQ-Nets / IR-Net): fp "
             "conv, binary 128-MP-256-256-MP-512-512-MP, fp FC."),
    ZooModel("alexnet", _sequential(_ALEXNET, _binary_fc_head), "CIFAR-sized binary AlexNet: "
             "5 convolutions, 3 fully connected; first and last fp."),
    ZooModel("small", _sequential(_SMALL, _linear_head), "Small BNN for 28x28 inputs: fp conv "
             "32, binary 3x3 convs 64-128-128 with max-pools.", in_channels=1, image_size=28),
    ZooModel("resnet18", _resnet18, "Binary ResNet-18 with real-valued shortcuts (residual "
             "coupling for channel pruning)."),
    ZooModel("birealnet18", _birealnet18, "Bi-Real Net-18 at CIFAR size: fp 3x3 stem, 16 "
             "binary 3x3 convs with a real-valued shortcut each (avg-pool + 1x1 fp conv + BN "
             "where they downsample), avg-pool, fp linear."),
    ZooModel("reactnet", _reactnet, "ReActNet-A-style BNN at CIFAR size: fp 3x3 stem (stride "
             "1), 13 blocks with RSign learnable thresholds and RPReLU activations "
             "(ReActBlock), avg-pool, fp linear."),
)
MODELS.update((zoo.name, zoo) for zoo in ZOO)
