"""The Forge family (Forge, Forge Neo, reForge, Forge Classic) as the host of SAG, PAG and SEG.

What they share and where they differ from A1111: the UNet is the model patcher's at
`sd_model.forge_objects.unet.model.diffusion_model` (Forge and Neo: `backend`, reForge and Classic:
`ldm_patched`), its middle block laid out as LDM's; per step the webui fires `cfg_denoiser` (B rows) and
`cfg_after_cfg`, never `cfg_denoised`; its sampling function runs cond and uncond in chunks named per UNet
call in `transformer_options["cond_or_uncond"]`, uncond first or in a call of their own, and hands the
patcher's post-CFG functions the CFG result, both predictions as x0 (every sampler), the input, sigma,
the uncond conditioning and the model options. So: `cfg_denoiser` arms the capture on the uncond chunk,
and a post-CFG function set on a clone of the webui's UNet patcher (which the webui rebuilds before each
sampling pass, so nothing stays patched) runs SAG's pass through the host's own batch function and adds
the correction; a second one runs PAG's and SEG's pass over the host's cond (x repeated once per method,
which the host's conditionings follow) and adds their guidance. That pass rides in the host's own call
where it can: a UNet function wrapper on the same clone adds its rows to the call that holds the cond chunk
(x, timestep and every per-row conditioning, ControlNet's outputs included, repeated from that chunk);
where another wrapper is set (MultiDiffusion), another extension replaces the attention (StyleAlign) or the
call cannot carry them, the pass is a call of its own. Inside a tiling wrapper (MultiDiffusion) SAG runs per
tile (tiles.py). The built-in SAG and PAG (Forge) and
pamparamm's PAG and SEG scripts write infotext keys when they are on: the same method of ours steps aside.
"""
import functools
import importlib
import math
from types import SimpleNamespace

from ..core.capture import MiddleBlockCapture, UncondChunk, middle_block_attention
from ..core.guidance import X0Space
from ..core.perturbation import PerturbationHooks
from ..core.perturbed import PerturbedSession
from ..core.session import SagSession
from ..ui import register_once
from .forge_call import COND, with_chunks_repeated
from .rows import CannotCarry, row_count
from .tiles import SagInTiles

BUILTIN_SAG_KEY = "sag_enabled"  # the infotext key the Forge hosts' built-in SAG writes when it is on
# the infotext keys other PAG and SEG implementations write when they are on: Forge's built-in PAG, pamparamm's
OTHER_IMPLEMENTATIONS = {"pag": {"pagi_enabled": "the webui's built-in PerturbedAttentionGuidance Integrated",
                                 "pag_enabled": "the Perturbed-Attention Guidance of sd-perturbed-attention"},
                         "seg": {"seg_enabled": "the Smoothed Energy Guidance of sd-perturbed-attention"}}
SESSION_ATTRIBUTE = "guidance_session"  # marks our post-CFG functions with the session they serve
# where the hosts keep their cond/uncond batch function: Forge and Neo, then reForge and Classic
BATCH_FUNCTION_MODULES = ("backend.sampling.sampling_function", "ldm_patched.modules.samplers")
UNET_WRAPPER = "model_function_wrapper"  # the model options' key of the UNet function wrapper


class UnsupportedModel(RuntimeError):
    """The model in use has nothing SAG can hook."""


class ForgeAdapter:
    """SAG in one Forge-family webui. `webui` holds what the adapter reads of it: the modules `shared` (the
    model in use) and `script_callbacks`, and `calc_cond_uncond_batch(model, cond, uncond, x, sigma,
    model_options)`, the host's function that runs the UNet over conditionings. `adapter()` gathers the
    webui's own."""

    reads_forge_infotext = False  # the `sag_*` keys belong to the host's built-in SAG

    def __init__(self, webui):
        self.webui = webui

    @staticmethod
    def unet_of(sd_model):
        """The UNet a Forge-family model runs, or UnsupportedModel."""
        patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        unet = getattr(getattr(patcher, "model", None), "diffusion_model", None)
        if middle_block_attention(unet) is None:
            raise UnsupportedModel("this model has no middle-block transformer (e.g. Flux, SD3, SSD-1B)")
        return unet

    def unsupported_reason(self):
        """Why SAG cannot run on this webui and model, or None."""
        try:
            self.unet_of(self.webui.shared.sd_model)
        except UnsupportedModel as error:
            return str(error)
        return None

    def release_model_hooks(self) -> None:
        """Remove any hooks left on the current model (after a failed generation, or on unload)."""
        try:
            unet = self.unet_of(self.webui.shared.sd_model)
        except Exception:
            return
        MiddleBlockCapture.release(middle_block_attention(unet)[1])
        PerturbationHooks.release(unet)

    # ---- sampling ------------------------------------------------------------------------------------

    def before_sampling(self, p) -> None:
        """Script.process_before_every_sampling (each of our Scripts calls it; once per pass is enough): give
        this pass's UNet patcher the post-CFG functions of the generation's sessions.

        At CFG 1 the hosts run no uncond rows unless a post-CFG function asks for them: SAG asks, in a pass
        whose CFG scale is 1, as ComfyUI's node and the hosts' built-in SAG do (not on the steps of a pass
        with a higher scale that Skip early CFG or NGMS turn to CFG 1: their uncond stays skipped, as in
        AUTOMATIC1111's webui); PAG and SEG ask only for the `snf` rescale, as pamparamm's scripts."""
        cfg_scale = getattr(p, "hr_cfg", None) if getattr(p, "is_hr_pass", False) else getattr(p, "cfg_scale", None)
        pass_at_cfg_1 = cfg_scale is not None and math.isclose(cfg_scale, 1.0)
        perturbed = PerturbedSession.of(p)
        snf = perturbed is not None and any(params.rescale_mode == "snf" for params in perturbed.methods.values())
        for session, function, needs_uncond in ((SagSession.of(p), self.post_cfg, pass_at_cfg_1),
                                                (perturbed, self.perturbed_post_cfg, snf)):
            if session is None or not session.active or self._ours(p.sd_model.forge_objects.unet, session):
                continue

            def post_cfg(args, session=session, function=function):  # a plain function: the patchers' clone()
                return function(session, args)  # deep-copies model_options, but not functions

            setattr(post_cfg, SESSION_ATTRIBUTE, session)
            with session.guard():
                unet = p.sd_model.forge_objects.unet.clone()
                unet.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=needs_uncond)
                if session is perturbed and session.rows_in_host_call and UNET_WRAPPER not in unet.model_options:
                    wrapper = functools.partial(self.unet_call, session)
                    setattr(wrapper, SESSION_ATTRIBUTE, session)
                    unet.set_model_unet_function_wrapper(wrapper)
                p.sd_model.forge_objects.unet = unet

    @staticmethod
    def _ours(patcher, session):
        """Our post-CFG function for `session` in `patcher`'s options, or None."""
        return next((fn for fn in patcher.model_options.get("sampler_post_cfg_function", [])
                     if getattr(fn, SESSION_ATTRIBUTE, None) is session), None)

    def on_cfg_denoiser(self, params) -> None:
        denoiser = getattr(params, "denoiser", None)
        p = getattr(denoiser, "p", None)
        sag, perturbed = SagSession.of(p), PerturbedSession.of(p)
        if not any(session is not None and session.active for session in (sag, perturbed)):
            self.release_model_hooks()  # left by a generation that never finished, if any
            return
        progress = denoiser.step / max(denoiser.total_steps or 1, 1)
        hires_pass = bool(getattr(p, "is_hr_pass", False))
        if sag is not None and sag.active:
            if p.extra_generation_params.get(BUILTIN_SAG_KEY):
                sag.stop("the webui's built-in Self-Attention Guidance is on as well; turn one of them off")
            else:
                with sag.guard():
                    unet = self.unet_of(denoiser.inner_model.inner_model)
                    self.keep_post_cfg_function(sag, denoiser)
                    sag.begin_step(unet, UncondChunk(target=params.x.shape[0]), latent_size=params.x.shape[-2:],
                                   progress=progress, hires_pass=hires_pass,
                                   host=denoiser.nmask if getattr(denoiser, "mask", None) is not None else None)
                    if sag.step is not None:
                        self.sag_inside_tiles(sag, denoiser.inner_model.inner_model.forge_objects.unet)
        if perturbed is not None and perturbed.active:
            perturbed.step_aside_for_others(p.extra_generation_params, OTHER_IMPLEMENTATIONS)
            with perturbed.guard():
                if perturbed.active:
                    unet = self.unet_of(denoiser.inner_model.inner_model)
                    self.keep_post_cfg_function(perturbed, denoiser)
                    one_prompt = row_count(params.text_cond) == params.x.shape[0]  # AND prompts: several conds
                    perturbed.begin_step(unet, progress=progress, hires_pass=hires_pass,
                                         host=tuple(params.x.shape) if one_prompt else None)

    @staticmethod
    def sag_inside_tiles(session: SagSession, patcher) -> None:
        """Where another extension's UNet function wrapper runs the step's calls (MultiDiffusion's tiles), SAG
        runs inside them (tiles.py). Set at the step, after every Script has set up the pass's patcher."""
        theirs = patcher.model_options.get(UNET_WRAPPER)
        if theirs is not None and getattr(theirs, SESSION_ATTRIBUTE, None) is None:
            wrapper = SagInTiles(session, theirs)
            setattr(wrapper, SESSION_ATTRIBUTE, session)
            patcher.model_options[UNET_WRAPPER] = wrapper

    def keep_post_cfg_function(self, session, denoiser) -> None:
        """Put our post-CFG function for `session` in front of the sampler's own list, where the sampler
        brings one. CFG++ samplers pass model options of their own with their post-CFG function, and Neo
        and reForge merge them over the patcher's with `dict.update`, which drops ours; their dict lives
        for one sampling pass."""
        extra_args = getattr(getattr(denoiser, "sampler", None), "sampler_extra_args", None) or {}
        options = extra_args.get("model_options")
        if not options or "sampler_post_cfg_function" not in options:
            return
        ours = self._ours(denoiser.inner_model.inner_model.forge_objects.unet, session)
        theirs = options["sampler_post_cfg_function"]
        if ours is not None and ours not in theirs:
            options["sampler_post_cfg_function"] = [ours] + theirs

    def post_cfg(self, session: SagSession, args: dict):
        """SAG's post-CFG function: its pass over the uncond rows, and the CFG result corrected."""
        denoised = args["denoised"]
        if session.step is None:
            return denoised
        repaint_mask = session.step.host

        def degraded_pass(x):
            return self.webui.calc_cond_uncond_batch(args["model"], args["uncond"], None, x, args["sigma"],
                                                     args["model_options"])[0]

        with session.guard():
            session.end_step(args["input"], args["uncond_denoised"], args["sigma"], X0Space(), degraded_pass,
                             repaint_mask)
            denoised = session.apply(denoised)
        return denoised

    def perturbed_post_cfg(self, session: PerturbedSession, args: dict):
        """PAG's and SEG's post-CFG function: one pass over the cond rows, once per method, and the
        guided result."""
        denoised = args["denoised"]
        if session.step is None:
            return denoised
        x, sigma = args["input"], args["sigma"]

        def perturbed_pass(rows, copies):
            return self.webui.calc_cond_uncond_batch(args["model"], args["cond"], None, rows, sigma.repeat(copies),
                                                     args["model_options"])[0]

        with session.guard():
            session.end_step(x, args["cond_denoised"], sigma, X0Space(), perturbed_pass)
            denoised = session.apply(denoised, x, sigma, X0Space(), args["uncond_denoised"])
        return denoised

    def unet_call(self, session: PerturbedSession, apply_model, args: dict):
        """The UNet function wrapper: the host's call, and where it holds the step's one cond chunk, PAG's and
        SEG's rows after its chunks (one chunk per method, from the cond chunk), their output kept for
        `perturbed_post_cfg`. A call that cannot carry them runs as it came."""
        x, timestep, c, chunks = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        step = session.step
        if not session.wants_host_call() or step.host is None or chunks.count(COND) != 1:
            return apply_model(x, timestep, **c)
        size = x.shape[0] // len(chunks)
        if (size,) + tuple(x.shape[1:]) != step.host:  # a tile or an area of the image: not the cond rows
            return apply_model(x, timestep, **c)
        replaced = (c.get("transformer_options") or {}).get("patches_replace") or {}
        if replaced.get("attn1") or replaced.get("attn2"):  # another extension's attention sees every row of the
            return apply_model(x, timestep, **c)          # call and may mix them (StyleAlign shares it by chunk)
        try:
            more_x, more_timestep, more_c = with_chunks_repeated(x, timestep, c, chunks, COND, len(step.methods))
        except CannotCarry as error:
            session.abandon_host_call(str(error))
            return apply_model(x, timestep, **c)
        session.arm_host_call(tiles_before=len(chunks), tiles_after=0, tile=size)
        try:
            out = apply_model(more_x, more_timestep, **more_c)
        except Exception as error:  # the host's own call, alone, tells whose error it was
            session.abandon_host_call(f"{type(error).__name__}: {error}")
            return apply_model(x, timestep, **c)
        with session.guard():
            session.keep_host_call_rows(out[x.shape[0]:])
        return out[:x.shape[0]]

    def register_callbacks(self) -> None:
        """The sampling callbacks, registered exactly once whatever reloads the script."""
        callbacks = self.webui.script_callbacks
        register_once(callbacks, ((callbacks.on_cfg_denoiser, self.on_cfg_denoiser),
                                  (callbacks.on_script_unloaded, self.release_model_hooks)))


def batch_function():
    """The host's `calc_cond_uncond_batch`, from whichever of its homes this webui has."""
    for name in BATCH_FUNCTION_MODULES:
        try:
            return importlib.import_module(name).calc_cond_uncond_batch
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {', '.join(BATCH_FUNCTION_MODULES)} has calc_cond_uncond_batch")


@functools.cache
def adapter() -> ForgeAdapter:
    """The adapter over this webui's own modules; one per process (see a1111.adapter)."""
    from modules import script_callbacks, shared

    return ForgeAdapter(SimpleNamespace(shared=shared, script_callbacks=script_callbacks,
                                        calc_cond_uncond_batch=batch_function()))
