"""Market-data sources for `qt feed`: ProfitDLL (ctypes), the simulator and file replay."""
