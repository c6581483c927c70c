"""What runs on this machine beside the server: free ports, child processes, open-loop load, and the machine a
number was measured on. Used by the tests, the benchmarks, the training launcher and the batching sweep; none
of it is the server, and none of it imports the server."""
