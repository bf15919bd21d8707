"""The settings of one inference run, built once from the config: `InferSettings.from_config`.

Every stage (tracking, avatar, renderer, stream, encoder) takes this one object instead of a
dozen parameters. It holds the config's inference keys with the run's overrides (the Python API's
and the batch CSV's per-run settings; only keys the config defines, each checked as the config
checks it) and what follows from them: the device, the batch size and the precision policy.
"""
import dataclasses

from talkingface.config.schema import check
from talkingface.utils.errors import ConfigError
from talkingface.utils.runtime import use_bf16


def precision(settings, device):
    """(bf16, int8) of a run with `settings` (a Config or an InferSettings) on `device`: infer_int8
    runs the rest of the generator in fp32, so it turns infer_bf16=auto off and refuses
    infer_bf16=true; int8 runs on the CPU only. An inference engine (infer_backend) takes fp32 inputs
    and turns bf16 off too."""
    int8 = bool(settings["infer_int8"])
    if int8 and device.type != "cpu":
        raise ConfigError(f"infer_int8 runs on the CPU only (device is {device}): set infer_int8=false "
                          "or --device=cpu")
    if int8 and settings["infer_bf16"] is True:
        raise ConfigError("infer_int8 and infer_bf16=true exclude each other: set one of them to false")
    engine = settings["infer_backend"] != "torch"
    if engine and device.type != "cpu":
        raise ConfigError(f"infer_backend={settings['infer_backend']} runs on the CPU only (device is {device}): "
                          "set infer_backend=torch or --device=cpu")
    return (False if int8 or engine else use_bf16(settings["infer_bf16"], device)), int8


@dataclasses.dataclass(frozen=True)
class InferSettings:
    config: object           # the run's Config (a key not in overrides falls back to it)
    overrides: dict          # this run's settings, checked
    device: object           # torch.device
    batch_size: int          # infer_batch_size: frames per network call
    bf16: bool               # bfloat16 autocast (precision())
    int8: bool               # the Base's 128x128 part in int8 (precision())
    reference: str           # reference_frame policy (model.inputs)

    @classmethod
    def from_config(cls, config, **overrides):
        """The settings of a run of `config` with `overrides` (keys the config defines)."""
        for key in overrides:
            if key not in config:
                raise ConfigError(f"unknown inference setting '{key}'")
        checked = {key: check(key, value, config[key], config["model"]) for key, value in overrides.items()}
        settings = {key: config[key] for key in ("infer_int8", "infer_bf16", "infer_backend", "infer_batch_size",
                                                   "reference_frame")}
        settings.update((key, value) for key, value in checked.items() if key in settings)
        device = config["device"]
        bf16, int8 = precision(settings, device)
        return cls(config, checked, device, int(settings["infer_batch_size"]), bf16, int8, settings["reference_frame"])

    def __getitem__(self, key):
        return self.overrides[key] if key in self.overrides else self.config[key]

    def with_values(self, **changes):
        """A copy with some fields changed (say bf16 or reference), for what depends on them."""
        return dataclasses.replace(self, **changes)
