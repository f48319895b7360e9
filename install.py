"""Run by the webui when it installs or starts the extension. SAG needs nothing beyond what the webui
already has (torch and gradio), so there is nothing to install."""
