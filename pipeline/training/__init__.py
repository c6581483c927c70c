"""What the train and tune stages use: strategies (distribute), the local launcher, the trainer and the
worker entry point a launched task runs, the custom loop, the keras-tuner alias."""
