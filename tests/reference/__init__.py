"""Independent reference implementations that the tests compare against (not used at run time)."""
