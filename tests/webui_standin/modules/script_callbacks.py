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


def _registration(kind):
    def register(callback):
        callback_map[kind].append(callback)
    return register


on_cfg_denoiser = _registration("cfg_denoiser")
on_cfg_denoised = _registration("cfg_denoised")
on_cfg_after_cfg = _registration("cfg_after_cfg")
on_script_unloaded = _registration("script_unloaded")
on_infotext_pasted = _registration("infotext_pasted")
on_ui_settings = _registration("ui_settings")
on_app_started = _registration("app_started")
on_before_ui = _registration("before_ui")


def remove_callbacks_for_function(callback):
    for callbacks in callback_map.values():
        callbacks[:] = [registered for registered in callbacks if registered != callback]


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()
    reported_errors.clear()
