"""Stand-in of modules.script_callbacks: CFG callback parameters, registration and dispatch.

Like the host, dispatch catches and reports every exception a callback raises.
"""
import traceback
from dataclasses import dataclass
from typing import Any

callback_map = {name: [] for name in ("cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "script_unloaded",
                                      "infotext_pasted", "ui_settings", "app_started", "before_ui")}
reported_errors = []


@dataclass
class CFGDenoiserParams:
    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class CFGDenoisedParams:
    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any


@dataclass
class AfterCFGCallbackParams:
    x: Any
    sampling_step: int
    total_sampling_steps: int


def _dispatch(kind, *args):
    for callback in list(callback_map[kind]):
        try:
            callback(*args)
        except Exception:
            reported_errors.append(traceback.format_exc())


def cfg_denoiser_callback(params):
    _dispatch("cfg_denoiser", params)


def cfg_denoised_callback(params):
    _dispatch("cfg_denoised", params)


def cfg_after_cfg_callback(params):
    _dispatch("cfg_after_cfg", params)


def script_unloaded_callback():
    _dispatch("script_unloaded")


def infotext_pasted_callback(infotext, params):
    _dispatch("infotext_pasted", infotext, params)


def before_ui_callback():
    _dispatch("before_ui")


def on_cfg_denoiser(callback):
    callback_map["cfg_denoiser"].append(callback)


def on_cfg_denoised(callback):
    callback_map["cfg_denoised"].append(callback)


def on_cfg_after_cfg(callback):
    callback_map["cfg_after_cfg"].append(callback)


def on_script_unloaded(callback):
    callback_map["script_unloaded"].append(callback)


def on_infotext_pasted(callback):
    callback_map["infotext_pasted"].append(callback)


def on_ui_settings(callback):
    callback_map["ui_settings"].append(callback)


def on_app_started(callback):
    callback_map["app_started"].append(callback)


def on_before_ui(callback):
    callback_map["before_ui"].append(callback)


def remove_callbacks_for_function(callback):
    for callbacks in callback_map.values():
        callbacks[:] = [registered for registered in callbacks if registered != callback]


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()
    reported_errors.clear()
