"""What the webuis of the AUTOMATIC1111 family show and accept alike, for each method: the panel
(`panel`), Settings (`settings`), infotext paste (`paste`), the X/Y/Z axes (`xyz`) and the API's argument
check (`api`). They speak to the host through `modules.scripts`, `script_callbacks`, `shared` and gradio,
which these webuis share."""


def register_once(script_callbacks, pairs) -> None:
    """Register each (registrar, callback) of `script_callbacks` exactly once, whatever reloads the script."""
    for register, callback in pairs:
        script_callbacks.remove_callbacks_for_function(callback)
        register(callback)


def register_callbacks(forge_keys: bool = True) -> None:
    """The UI's callbacks: Settings, paste (`forge_keys`: whether other implementations' keys, which Forge's
    own SAG and PAG write, restore ours), the API check and the X/Y/Z axes."""
    from modules import script_callbacks

    from . import api, paste, settings, xyz

    on_pasted = paste.on_infotext_pasted if forge_keys else paste.on_infotext_pasted_own_keys
    for other in (paste.on_infotext_pasted, paste.on_infotext_pasted_own_keys):
        script_callbacks.remove_callbacks_for_function(other)
    register_once(script_callbacks, ((script_callbacks.on_infotext_pasted, on_pasted),
                                     (script_callbacks.on_ui_settings, settings.on_ui_settings),
                                     (script_callbacks.on_app_started, api.on_app_started),
                                     (script_callbacks.on_before_ui, xyz.add_axes_to_script)))
    xyz.add_axes_to_script()  # also now: with --nowebui the X/Y/Z script builds its UI before on_before_ui runs
