"""Host adapters: each one finds the UNet its host runs, feeds a generation's session the rows of each
sampling step and runs SAG's extra pass the host's way. `a1111`: AUTOMATIC1111's webui 1.8-1.10."""
