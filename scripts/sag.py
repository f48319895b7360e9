"""Self-Attention Guidance: the webui Script. The logic lives in sag_ext; this file only wires it."""
import modules.scripts as scripts

from sag_ext import webui

webui.register_callbacks()


class SelfAttentionGuidanceScript(scripts.Script):
    def title(self):
        return webui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return webui.build_ui(self)

    def process(self, p, *args):
        webui.start_generation(p, args)

    def postprocess_batch(self, p, *args, images=None, **kwargs):
        webui.finish_batch(p, images)

    def postprocess(self, p, processed, *args):
        webui.end_generation(p, processed)
