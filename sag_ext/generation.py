"""A generation as the webui's Script sees it: its arguments (panel or API, with an X/Y/Z cell's values
on top) become a `SagSession` on the processing object `p`; each batch's end checks it and makes the
mask previews; the generation's end removes the hooks and reports. The host adapter supplies what
depends on the host (see `sag_ext.hosts`)."""
import dataclasses
import logging

from PIL import Image

from .core.params import INFOTEXT_KEYS, InvalidParams, params_from, parse_script_args
from .core.preview import overlay
from .core.session import SagSession, report_off
from .ui import xyz
from .ui.settings import option, panel_defaults

log = logging.getLogger("sd_webui_sag")


def generation_params(p, args):
    """(SagParams, options) for `p`: the script arguments with the X/Y/Z cell's overrides on top."""
    params, options, messages = parse_script_args(args, defaults=panel_defaults())
    cell = xyz.overrides(p)
    if cell:
        params, more = params_from({**dataclasses.asdict(params), **cell}, strict=False)
        messages += more
    for message in messages:
        log.warning("[SAG] %s", message)
    return params, options


def start(p, args, host) -> None:
    """Script.process: parse the arguments, write the infotext and attach a session to `p`."""
    end(p)
    host.release_model_hooks()
    for key in INFOTEXT_KEYS.values():
        p.extra_generation_params.pop(key, None)  # X/Y/Z cells share one dict
    try:
        params, options = generation_params(p, args)
    except InvalidParams as error:
        report_off(str(error))
        return
    if not params.enabled:
        return
    reason = host.unsupported_reason()
    if reason:
        report_off(reason)
        return
    p.extra_generation_params.update(params.infotext(has_hires_pass=bool(getattr(p, "enable_hr", False))))
    preview = options.get("preview", False) if getattr(p, "is_api", False) else option("mask_preview", False)
    SagSession(params, collect_preview=preview).attach_to(p)


def finish_batch(p, images) -> None:
    """Script.postprocess_batch, before the batch's infotexts are written: drop SAG's keys if it changed
    nothing, and make the mask previews over the decoded images (B, 3, H, W in 0..1)."""
    session = SagSession.of(p)
    if session is None:
        return
    with session.guard():
        session.end_batch()
    if session.changed_nothing():
        for key in INFOTEXT_KEYS.values():
            p.extra_generation_params.pop(key, None)
    blurred_share = session.take_blurred_share()
    if blurred_share is None:
        return
    from modules import images as webui_images, shared

    for index, image in enumerate(images):
        pixels = (image.movedim(0, -1).clamp(0, 1) * 255).byte().cpu().numpy()
        preview = overlay(Image.fromarray(pixels), blurred_share[index % blurred_share.shape[0]])
        session.add_preview(preview)
        if option("save_preview", False):
            webui_images.save_image(preview, p.outpath_samples, "", p.seeds[index % len(p.seeds)],
                                    p.prompts[index % len(p.prompts)], shared.opts.samples_format,
                                    suffix="-sag-mask", p=p)


def end(p, processed=None) -> None:
    """Script.postprocess (and before a new start): remove the hooks, say if SAG changed nothing, show
    previews, forget the session."""
    session = SagSession.of(p)
    if session is None:
        return
    session.close()
    if processed is not None:
        session.report_unchanged()
    SagSession.detach_from(p)
    if processed is not None and session.previews:
        processed.images.extend(session.previews)
        processed.infotexts.extend([processed.infotexts[0]] * len(session.previews))
