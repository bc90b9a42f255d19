"""Parameters of the monitor node, declared in one place with descriptors, ranges and validation.

Each parameter says when a change takes effect:

- ``startup``: read-only, fixed for the life of the process;
- ``configure``: read by ``on_configure``; may be changed only while the node is unconfigured;
- ``activate``: read by ``on_activate``; may be changed only while the node is not active;
- ``live``: applied at once, in any state.

Names with a dot are nested in YAML (``hysteresis: {raise_after: 3}``).

The specs, :class:`MonitorParams` and the checks are plain Python (no ROS import at module level),
so the offline replay reads the same defaults and names as the node: one source of truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Union

from lsea_monitor.errors import InputValidationError
from lsea_monitor.node_cameras import image_topics_problems

Value = Union[bool, int, float, str, list, tuple]
#: Larger images are rejected before decoding (lsea_monitor.ros_image uses the same value).
DEFAULT_MAX_PIXELS = 4096 * 4096
#: torch.compile modes (lsea_monitor.accel.COMPILE_MODES; not imported here to keep torch out).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
STARTUP, CONFIGURE, ACTIVATE, LIVE = "startup", "configure", "activate", "live"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class ParamSpec:
    name: str  #: ROS parameter name
    field: str  #: attribute of :class:`MonitorParams`
    default: Value
    description: str
    applies: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", "autostart", True, "Configure and activate at start-up; exit non-zero if that fails.",
              STARTUP),
    ParamSpec("input_type", "input_type", "raw", "Message type on 'image': raw (sensor_msgs/Image) or compressed "
              "(sensor_msgs/CompressedImage, JPEG or PNG).", ACTIVATE, choices=("raw", "compressed")),
    ParamSpec("checkpoint", "checkpoint", "", "Model checkpoint file the artefact was calibrated with.", CONFIGURE),
    ParamSpec("model_class", "model_class", "", "Model class as 'package.module:Class'; '' = the artefact's.",
              CONFIGURE),
    ParamSpec("layer", "layer", "", "Dotted path of the hooked latent layer; '' = the artefact's.", CONFIGURE),
    ParamSpec("artefact", "artefact", "", "Detector artefact (.safetensors) written by lsea-calibrate.", CONFIGURE),
    ParamSpec("trust_checkpoint", "trust_checkpoint", False, "Unpickle the checkpoint fully (checkpoints that "
              "pickle objects, e.g. the original authors'): only the bytes whose SHA-256 the artefact records are "
              "loaded, i.e. the file calibrated with trust_checkpoint; only for files you trust.", CONFIGURE),
    ParamSpec("device", "device", "auto", "auto (GPU when present), cpu, cuda or cuda:N.", CONFIGURE),
    ParamSpec("precision", "precision", "fp32", "Inference precision of the model pass.", CONFIGURE,
              choices=("fp32", "fp16", "bf16")),
    ParamSpec("mc_samples", "mc_samples", 0, "MC-dropout samples per frame; 0 = the artefact's (others are refused).",
              CONFIGURE, 0, 1024),
    ParamSpec("scoring", "scoring", "auto", "Where entropies, PCA and the detector run: auto (device on a GPU), "
              "host, device.", CONFIGURE, choices=("auto", "host", "device")),
    ParamSpec("channels_last", "channels_last", False, "Model and input in channels_last memory format.", CONFIGURE),
    ParamSpec("compile", "compile", False, "torch.compile the deterministic parts of the model (compiled during "
              "the warm-up at activate: slow the first time).", CONFIGURE),
    ParamSpec("compile_mode", "compile_mode", "default", "torch.compile mode; reduce-overhead adds CUDA graphs.",
              CONFIGURE, choices=COMPILE_MODES),
    ParamSpec("image_topics", "image_topics", [], "Cameras as 'name=topic' or 'topic' (name from the topic); "
              "[] = one camera on 'image' with ~/verdict and ~/ood. Several: one batched forward pass for the "
              "newest frame of each, verdicts on ~/<name>/verdict and ~/<name>/ood.", ACTIVATE),
    ParamSpec("batch_gather_ms", "batch_gather_ms", 2.0, "Several cameras: once one frame is in, wait up to this "
              "long for the others' so that they share a forward pass.", LIVE, 0.0, 1000.0),
    ParamSpec("max_rate_hz", "max_rate_hz", 0.0, "Most frames processed per second; 0 = as fast as possible.", LIVE,
              0.0, 1000.0),
    ParamSpec("hysteresis.raise_after", "raise_after", 3, "Raise the flag after k OoD frames in the window.", LIVE,
              1, 1000),
    ParamSpec("hysteresis.window", "window", 5, "n, the number of recent frames the raise rule looks at.", LIVE,
              1, 1000),
    ParamSpec("hysteresis.clear_after", "clear_after", 5, "Clear the flag after m consecutive InD frames (and "
              "once the window holds fewer than k OoD frames: at least window - raise_after + 1 of them).", LIVE,
              1, 1000),
    ParamSpec("watchdog_timeout_s", "watchdog_timeout_s", 1.0, "No image for this long -> stale ERROR verdicts and "
              "the flag raised; 0 disables the watchdog (not for a vehicle).", LIVE, 0.0, 3600.0),
    ParamSpec("inference_timeout_s", "inference_timeout_s", 2.0, "Images arrive but none has got a verdict for "
              "this long (inference hung or slower than this) -> stalled ERROR verdicts and the flag raised; 0 "
              "disables the check (not for a vehicle).", LIVE, 0.0, 3600.0),
    ParamSpec("warmup_timeout_s", "warmup_timeout_s", 300.0, "Activate fails if the warm-up (first passes, "
              "torch.compile) takes longer; 0 waits without limit (not for a vehicle).", ACTIVATE, 0.0, 86400.0),
    ParamSpec("qos.reliability", "qos_reliability", "best_effort", "Reliability of the image subscription.", ACTIVATE,
              choices=("best_effort", "reliable")),
    ParamSpec("qos.depth", "qos_depth", 1, "History depth of the image subscription.", ACTIVATE, 1, 100),
    ParamSpec("diagnostics_period_s", "diagnostics_period_s", 1.0, "Period of node health on /diagnostics (<= 1 s).",
              LIVE, 0.05, 1.0),
    ParamSpec("max_image_pixels", "max_image_pixels", DEFAULT_MAX_PIXELS, "Images with more pixels (width x height) "
              "are rejected before decoding.", LIVE, 1, 1 << 28),
)
BY_NAME = {s.name: s for s in SPECS}


@dataclass(frozen=True)
class MonitorParams:
    """The node's parameter values, as plain Python."""

    autostart: bool = True
    input_type: str = "raw"
    checkpoint: str = ""
    model_class: str = ""
    layer: str = ""
    artefact: str = ""
    trust_checkpoint: bool = False
    device: str = "auto"
    precision: str = "fp32"
    mc_samples: int = 0
    scoring: str = "auto"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    image_topics: tuple = ()
    batch_gather_ms: float = 2.0
    max_rate_hz: float = 0.0
    raise_after: int = 3
    window: int = 5
    clear_after: int = 5
    watchdog_timeout_s: float = 1.0
    inference_timeout_s: float = 2.0
    warmup_timeout_s: float = 300.0
    qos_reliability: str = "best_effort"
    qos_depth: int = 1
    diagnostics_period_s: float = 1.0
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def replace(self, values: dict[str, Value]) -> "MonitorParams":
        """A copy with ROS parameter ``values`` (by ROS name) applied."""
        kwargs = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kwargs.update({BY_NAME[name].field: value for name, value in values.items() if name in BY_NAME})
        topics = kwargs["image_topics"]  # a string array; None or a byte array when declared/given empty
        kwargs["image_topics"] = tuple(topics) if isinstance(topics, (list, tuple)) else (() if not topics else topics)
        return MonitorParams(**kwargs)


def descriptor(spec: ParamSpec) -> Any:
    """The ``rcl_interfaces/ParameterDescriptor`` of ``spec`` (description, range, choices, read-only)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    constraints = f"applies at {spec.applies}"
    if spec.choices:
        constraints = f"one of {', '.join(spec.choices)}; {constraints}"
    d = ParameterDescriptor(name=spec.name, description=spec.description, additional_constraints=constraints,
                            read_only=spec.applies == STARTUP)
    if isinstance(spec.default, list):
        d.dynamic_typing = True  # an empty default has no type for rclpy; problems() checks the strings
    if isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.low is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    elif isinstance(spec.default, float) and spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    return d


def problems(p: MonitorParams) -> list[str]:
    """What is wrong with a set of values beyond types and ranges (choices, formats, cross-field)."""
    out = []
    for spec in SPECS:
        value = getattr(p, spec.field)
        if spec.choices and value not in spec.choices:
            out.append(f"{spec.name} must be one of {', '.join(spec.choices)}, got {value!r}")
    if not _DEVICE_RE.match(p.device):
        out.append(f"device must be auto, cpu, cuda or cuda:N, got {p.device!r}")
    if p.max_rate_hz > 0 and p.inference_timeout_s > 0 and 1.0 / p.max_rate_hz >= p.inference_timeout_s:
        out.append(f"max_rate_hz ({p.max_rate_hz:g}) must be 0 or above 1 / inference_timeout_s "
                   f"({1.0 / p.inference_timeout_s:g} Hz): frames would wait for a verdict past the timeout")
    if p.raise_after > p.window:
        out.append(f"hysteresis.raise_after ({p.raise_after}) must not exceed hysteresis.window ({p.window})")
    if not isinstance(p.image_topics, tuple) or not all(isinstance(t, str) for t in p.image_topics):
        out.append(f"image_topics must be a list of strings, got {p.image_topics!r}")
    else:
        out += image_topics_problems(p.image_topics)
    return out


def missing_for_configure(p: MonitorParams) -> list[str]:
    """Parameters that must be set before configure can load anything."""
    return [name for name in ("checkpoint", "artefact") if not getattr(p, name)]


def declare(node: Any) -> MonitorParams:
    """Declare every parameter on ``node`` (overrides from --params-file / -p apply) and check them.

    Raises
    ------
    InputValidationError
        A value is not among the choices, or the values contradict each other.
    rclpy.exceptions.ParameterException
        A value has the wrong type or is out of range (raised by rclpy itself).
    """
    for spec in SPECS:
        node.declare_parameter(spec.name, spec.default, descriptor(spec))
    p = read(node)
    bad = problems(p)
    if bad:
        raise InputValidationError("Invalid parameters: " + "; ".join(bad) + ".")
    return p


def read(node: Any) -> MonitorParams:
    return MonitorParams().replace({s.name: node.get_parameter(s.name).value for s in SPECS})


def check_change(current: MonitorParams, changes: Iterable[Any], state: str) -> str:
    """Why a set-parameters request must be refused ('' when it may go ahead).

    ``changes`` are ``rclpy.parameter.Parameter``; ``state`` is the lifecycle state label.
    """
    values: dict[str, Value] = {}
    for param in changes:
        spec = BY_NAME.get(param.name)
        if spec is None:
            continue  # e.g. use_sim_time: rclpy's business
        if spec.applies == CONFIGURE and state != "unconfigured":
            return f"{param.name} is read at configure: deactivate and clean up the node first (state: {state})."
        if spec.applies == ACTIVATE and state == "active":
            return f"{param.name} is read at activate: deactivate the node first."
        values[param.name] = param.value
    bad = problems(current.replace(values))
    return "; ".join(bad)
