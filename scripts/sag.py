"""Self-Attention, Perturbed-Attention and Smoothed Energy Guidance: the webui Scripts. They only declare
the Scripts; the work is in sag_ext."""
import modules.scripts as scripts

from sag_ext import generation, hosts, ui
from sag_ext.core.params import SagParams
from sag_ext.core.perturbed_params import PagParams, SegParams
from sag_ext.ui.panel import build_ui

host = hosts.detect()
ui.register_callbacks(forge_keys=host.reads_forge_infotext)
host.register_callbacks()


class GuidanceScript:
    """One method's panel and generation hooks; `params_class` names the method. Not a Script itself: the
    webui registers every Script subclass a script file's namespace holds."""

    params_class = SagParams

    def title(self):
        return self.params_class.METHOD.title

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return build_ui(self, self.params_class, forge_keys=host.reads_forge_infotext)

    def process(self, p, *args):
        generation.start(p, args, host, self.params_class)

    def process_before_every_sampling(self, p, *args, **kwargs):
        host.before_sampling(p)

    def postprocess_batch(self, p, *args, images=None, **kwargs):
        generation.finish_batch(p, images, self.params_class)

    def postprocess(self, p, processed, *args):
        generation.end(p, self.params_class, processed)


class SelfAttentionGuidanceScript(GuidanceScript, scripts.Script):
    params_class = SagParams


class PerturbedAttentionGuidanceScript(GuidanceScript, scripts.Script):
    params_class = PagParams


class SmoothedEnergyGuidanceScript(GuidanceScript, scripts.Script):
    params_class = SegParams
