"""The controller's client API, one module per resource."""
