pytest_plugins = ["swarmstore.testing.fixtures"]
