"""Face parsers on aligned crops: facexlib's BiSeNet / ParseNet (local weights) and an offline geometric one."""
