"""Self-Attention Guidance for the AUTOMATIC1111 webui. Only `sag_ext.webui` imports the webui."""
