"""The models prunetune builds, and their checkpoints.

- `zoo`: the model registry (`MODELS`, `ModelSpec`, `build_model`, `example_input`): built-in
  CIFAR VGG19 / ResNet-56 / MobileNetV2, torchvision classification models by name, and the
  user's own `module.path:callable`.
- `vgg`, `cifar`: the built-in CIFAR architectures; `layers`: what they share (the width rule,
  weight initialisation).
- `pruned`: pruned models of any architecture saved as structure + state dict, loaded with
  weights_only=True (`save_pruned`, `load_pruned`).
- `checkpoints`: reading state dicts safely, with one readable paragraph per bad file, and
  loading one into a model only when it fits (`load_fitting`).
"""

from pruning.models.checkpoints import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    as_state_dict,
    count_params,
    describe_mismatch,
    load_checkpoint,
    load_fitting,
    read_checkpoint,
    read_state_dict,
    unwrap_state_dict,
)
from pruning.models.cifar import mobilenet_v2, resnet56
from pruning.models.pruned import apply_widths, layer_widths, load_pruned, save_pruned
from pruning.models.vgg import (
    MAX_WIDTH,
    VGG,
    VGG19_BLOCKS,
    check_width,
    load_vgg19,
    uniform_width,
    vgg19,
    vgg19_classes,
    vgg19_from_state_dict,
    vgg19_widths,
)
from pruning.models.zoo import (
    MODELS,
    TORCHVISION,
    ModelEntry,
    ModelSpec,
    build_model,
    check_arch,
    example_input,
    model_entry,
)

__all__ = [
    "MAX_WIDTH",
    "MODELS",
    "TORCHVISION",
    "VGG",
    "VGG19_BLOCKS",
    "CheckpointMismatchError",
    "ModelEntry",
    "ModelSpec",
    "UnreadableCheckpointError",
    "apply_widths",
    "as_state_dict",
    "build_model",
    "check_arch",
    "check_width",
    "count_params",
    "describe_mismatch",
    "example_input",
    "layer_widths",
    "load_checkpoint",
    "load_fitting",
    "load_pruned",
    "load_vgg19",
    "mobilenet_v2",
    "model_entry",
    "read_checkpoint",
    "read_state_dict",
    "resnet56",
    "save_pruned",
    "uniform_width",
    "unwrap_state_dict",
    "vgg19",
    "vgg19_classes",
    "vgg19_from_state_dict",
    "vgg19_widths",
]
