"""Lightning callbacks: throughput/MFU, TensorBoard images and layout."""
