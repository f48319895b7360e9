"""Self-Attention Guidance: the webui Script. It only declares the Script; the work is in sag_ext."""
import modules.scripts as scripts

from sag_ext import generation, hosts, ui
from sag_ext.ui.panel import build_ui

host = hosts.detect()
ui.register_callbacks(forge_keys=host.reads_forge_infotext)
host.register_callbacks()


class SelfAttentionGuidanceScript(scripts.Script):
    def title(self):
        return ui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return build_ui(self, forge_keys=host.reads_forge_infotext)

    def process(self, p, *args):
        generation.start(p, args, host)

    def process_before_every_sampling(self, p, *args, **kwargs):
        host.before_sampling(p)

    def postprocess_batch(self, p, *args, images=None, **kwargs):
        generation.finish_batch(p, images)

    def postprocess(self, p, processed, *args):
        generation.end(p, processed)
