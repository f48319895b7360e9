"""Stand-in of modules.ui_loadsave: how ui-config.json treats a component's value (`add_component`'s
`apply_field`): skipped when the component sets `do_not_save_to_config`; otherwise recorded at the first
start and, once recorded, put back over whatever value the component was built with."""


class UiLoadsave:
    def __init__(self, ui_settings: dict):
        self.ui_settings = ui_settings  # the content of ui-config.json

    def add_component(self, path: str, component) -> None:
        if getattr(component, "do_not_save_to_config", False):
            return
        key = f"{path}/value"
        saved = self.ui_settings.get(key)
        if saved is None:
            self.ui_settings[key] = component.value
        else:
            component.value = saved
