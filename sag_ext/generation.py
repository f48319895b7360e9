"""A generation as the webui's Scripts see it: each method's arguments (panel or API, with an X/Y/Z cell's
values on top) become its session on the processing object `p` (SAG's own; PAG and SEG share one, so
their passes share calls); each batch's end checks it and makes SAG's mask previews; the generation's
end removes the hooks and reports. The host adapter supplies what depends on the host (see
`sag_ext.hosts`)."""
import dataclasses
import logging

from PIL import Image

from .core.params import InvalidParams, SagParams, params_from, parse_script_args
from .core.perturbed import PerturbedSession
from .core.perturbed_params import PagParams
from .core.preview import overlay
from .core.console import report_off
from .core.session import SagSession
from .ui import xyz
from .ui.settings import option, panel_defaults

log = logging.getLogger("sd_webui_sag")


def generation_params(p, args, defaults_class=SagParams):
    """(params, options) for `p`: the script arguments with the X/Y/Z cell's overrides on top."""
    method = defaults_class.METHOD
    params, options, messages = parse_script_args(args, defaults=panel_defaults(defaults_class))
    cell = xyz.overrides(p, defaults_class)
    if cell:
        params, more = params_from({**dataclasses.asdict(params), **cell}, strict=False, defaults=params)
        messages += more
    for message in messages:
        log.warning("[%s] %s", method.abbreviation, message)
    return params, options


def session_class(defaults_class):
    """The session a method's pass runs in: SAG's own, or the one PAG and SEG share."""
    return SagSession if defaults_class.METHOD.key == SagParams.METHOD.key else PerturbedSession


def session_settings(p, defaults_class, options: dict) -> dict:
    """What the method's session takes from the webui's settings (an API request's own options for SAG's
    preview)."""
    if session_class(defaults_class) is SagSession:
        api = getattr(p, "is_api", False)
        return {"collect_preview": options.get("preview", False) if api else option("mask_preview", False)}
    return {"rows_in_host_call": bool(option("in_webui_call", True, params_class=PagParams))}


def start(p, args, host, defaults_class) -> None:
    """Script.process: parse the arguments, write the infotext and attach the method to `p`'s session."""
    method = defaults_class.METHOD
    end(p, defaults_class)
    host.release_model_hooks()
    for key in method.infotext_keys.values():
        p.extra_generation_params.pop(key, None)  # X/Y/Z cells share one dict
    try:
        params, options = generation_params(p, args, defaults_class)
    except InvalidParams as error:
        report_off(method, str(error))
        return
    if not params.enabled:
        return
    reason = host.unsupported_reason()
    if reason:
        report_off(method, reason)
        return
    written = params.infotext(has_hires_pass=bool(getattr(p, "enable_hr", False)))
    p.extra_generation_params.update(written)
    session = session_class(defaults_class).for_generation(p, method.key)
    session.add(params, **session_settings(p, defaults_class, options))
    session.infotext[method.key] = written


def drop_infotext(p, session, key: str) -> None:
    """Remove the infotext entries the method `key` wrote, where they are still its own: sd-webui-incantations
    writes `PAG Scale` and `SEG Blur Sigma` too, and a method of ours that stepped aside for it leaves its
    entries alone (an entry is ours if it is the very value object we wrote)."""
    for name, value in session.infotext.pop(key, {}).items():
        if p.extra_generation_params.get(name) is value:
            del p.extra_generation_params[name]


def finish_batch(p, images, defaults_class) -> None:
    """Script.postprocess_batch, before the batch's infotexts are written: drop the method's keys if it
    changed nothing, and make its preview pictures (SAG's mask) over the decoded images (B, 3, H, W in 0..1)."""
    key = defaults_class.METHOD.key
    session = session_class(defaults_class).of(p)
    if session is None or key not in session.methods:
        return
    with session.guard():
        session.end_batch()
    if session.changed_nothing(key):
        drop_infotext(p, session, key)
    share = session.take_preview()
    if share is None:
        return
    from modules import images as webui_images, shared

    for index, image in enumerate(images):
        pixels = (image.movedim(0, -1).clamp(0, 1) * 255).byte().cpu().numpy()
        preview = overlay(Image.fromarray(pixels), share[index % share.shape[0]])
        session.previews.append(preview)
        if option("save_preview", False):
            webui_images.save_image(preview, p.outpath_samples, "", p.seeds[index % len(p.seeds)],
                                    p.prompts[index % len(p.prompts)], shared.opts.samples_format,
                                    suffix="-sag-mask", p=p)


def end(p, defaults_class, processed=None) -> None:
    """Script.postprocess (and before a new start): say if the method changed nothing; once every method of
    its session has ended, remove the hooks, show the previews and forget the session."""
    session = session_class(defaults_class).of(p)
    if session is None or not session.end(defaults_class.METHOD.key, report=processed is not None):
        return
    session.detach_from(p)
    if processed is not None and session.previews:
        processed.images.extend(session.previews)
        processed.infotexts.extend([processed.infotexts[0]] * len(session.previews))
