"""Stand-in of modules.hypernetworks.hypernetwork: how the webui's attention forwards apply the loaded
hypernetworks to the context of every attention (self-attention too) before its `to_k` and `to_v`.
(The host also casts to float and back around each layer; the stand-in runs in float32.)"""


def apply_single_hypernetwork(hypernetwork, context_k, context_v, layer=None):
    layers = (hypernetwork.layers if hypernetwork is not None else {}).get(context_k.shape[2], None)
    if layers is None:
        return context_k, context_v
    return layers[0](context_k), layers[1](context_v)


def apply_hypernetworks(hypernetworks, context, layer=None):
    context_k = context_v = context
    for hypernetwork in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(hypernetwork, context_k, context_v, layer)
    return context_k, context_v
