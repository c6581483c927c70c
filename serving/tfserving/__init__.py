"""The production path: a self-contained bundle for the real `tensorflow/serving` image, and the batching
sweep that chooses its batching parameters.

    python -m serving.tfserving sweep --model model_repository/digits  # -> model_repository/batching_parameters.txt
    python -m serving.tfserving build --repository model_repository --out bundle

The bundle holds the model versions its models.config serves, the three config files tensorflow_model_server reads
(models.config, batching_parameters.txt, monitoring.config), Dockerfiles (GPU and CPU), docker-compose.yml,
Kubernetes manifests (k8s/), the request logging pod beside it (logging/) and a README. Our embedded server accepts
the same files and flags, so the tests serve a bundle locally before it is deployed.

    errors.py     UsageError: a problem with the command's input (one line, exit 2)
    container.py  ports, paths in the container and tensorflow_model_server's flags: one source for all files
    served.py     which models and versions a bundle serves (the repository's models.config, or generated)
    docker.py     Dockerfile, Dockerfile.gpu, docker-compose.yml
    k8s.py        Deployment, Service, HorizontalPodAutoscaler, ConfigMap
    request_logging.py  logging/: the request logs TF Serving's build cannot write, by maas's server beside it
    yamlfile.py   YAML as people write it (no anchors, config files as literal blocks)
    readme.py     the bundle's README
    bundle.py     build: all of the above into a temp dir, renamed into place
    sweep.py      the batching sweep: knee rate of each candidate against no batching, and its file
"""
