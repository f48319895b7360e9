"""Stand-in of the few gradio 3.41 blocks the SAG panel builds (not gradio): each keeps its arguments."""


class Block:
    def __init__(self, value=None, **kwargs):
        self.value = value
        self.__dict__.update(kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Checkbox(Block):
    pass


class Slider(Block):
    pass


class Radio(Block):
    pass


class Row(Block):
    pass


class Accordion(Block):
    def __init__(self, label=None, **kwargs):
        super().__init__(label=label, **kwargs)


class Textbox(Block):
    pass


class Number(Block):
    pass
