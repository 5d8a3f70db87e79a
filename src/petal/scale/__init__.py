"""Scale-out on Ray (petal-vision[scale]): the local cluster, multi-worker training and predict-batch."""
