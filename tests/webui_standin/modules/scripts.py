"""Stand-in of modules.scripts: the Script base class as an AlwaysVisible script sees it."""
AlwaysVisible = object()


class Script:
    infotext_fields = None
    paste_field_names = None

    def elem_id(self, item_id):
        return f"script_txt2img_self-attention_guidance_{item_id}"
