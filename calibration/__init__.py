"""INT8 calibration: MOSEI training features -> Q/DQ graphs (ModelOpt), a CPU int8 candidate, an accuracy report."""
