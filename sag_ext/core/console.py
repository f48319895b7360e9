"""The console lines a method writes: at most one per generation, saying it is off or changed nothing, and
why."""
import logging

log = logging.getLogger("sd_webui_sag")
# its own level: a host may set the root logger's to ERROR (Forge Neo 6e1e0d5 does by default), which would
# silence the one line a method owes the user when it steps aside
log.setLevel(logging.WARNING)


def report_off(method, reason: str) -> None:
    """`method` (a params.Method) is off for this generation."""
    log.warning("[%s] %s is off for this generation: %s", method.abbreviation, method.title, reason)


def report_unchanged(method, reasons: set, fallback: str) -> None:
    """`method` ran but changed nothing in this generation, for `reasons` (or `fallback` where none was noted)."""
    log.warning("[%s] %s changed nothing in this generation: %s", method.abbreviation, method.title,
                "; ".join(sorted(reasons)) or fallback)


def report_separate_pass(methods: list, reason: str) -> None:
    """`methods`' rows could not ride in the webui's own UNet call: they run in a call of their own."""
    log.warning("%s the webui's UNet call could not carry their rows (%s); for the rest of this generation they "
                "run in a call of their own", "".join(f"[{method.abbreviation}]" for method in methods), reason)

