"""The agent test kit: tiny artifacts, emulated targets that clean up after themselves, and the
pytest fixtures shared by tests/device_agents, tests/targets and tests/faults. Not shipped."""
