"""The model repository: rendering specs into config.pbtxt + shims, what it needs."""
