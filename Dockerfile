# PetSynth BIDS-App image.
#   CPU (default):  docker build -t petsynth .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cu126 -t petsynth:cuda .
#   offline torch:  --build-arg TORCH_FIND_LINKS=DIR-or-URL takes the torch wheel from there
#                   instead of https://download.pytorch.org/whl/<variant>: a URL (an internal
#                   mirror), or with podman/buildah a folder mounted with -v DIR:DIR:ro
#   run:            docker run --rm -u $(id -u):$(id -g) -v /data/bids:/bids:ro \
#                     -v /data/out:/out -v /scratch/work:/work petsynth /bids /out participant
# Everything the app needs at run time (templates, atlases, deepbet weights, default model,
# TemplateFlow's template names) is installed in the image: it runs with --network none, as any
# UID, and with a read-only root file system (--read-only --tmpfs /tmp): it writes only to
# the output folder, the work dir (default /work/work) and /tmp.
# Versions: every dependency at the version of requirements.lock (scripts/lock.sh).
# singularity.def runs the same steps (tests/test_container_defs.py compares the two files).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_FIND_LINKS=

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NO_ET=1 \
    PETSYNTH_CONTAINER=docker \
    PETSYNTH_LOCK_FILE=/opt/petsynth/requirements.lock \
    HOME=/home/petsynth \
    MPLCONFIGDIR=/tmp/.petsynth-matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

# node + the official BIDS validator (npm), run on the input dataset (pet_synth_app/validator.py);
# npm trusts the system CA bundle too (TLS-inspecting proxies, as pip does)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 nodejs npm \
    && NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt npm install -g bids-validator@1.15.0 \
    && npm cache clean --force \
    && rm -rf /var/lib/apt/lists/*

COPY requirements.lock /opt/petsynth/requirements.lock

# torch first, in the variant asked for (cpu, cu126, ...): from the PyTorch index of that
# variant (its +cpu/+cu126 wheel outranks PyPI's plain one) or from a folder of wheels; its
# dependencies at the locked versions
RUN if [ -n "$TORCH_FIND_LINKS" ]; then torch_src="--find-links=$TORCH_FIND_LINKS"; \
    else torch_src="--extra-index-url=https://download.pytorch.org/whl/$TORCH_VARIANT"; fi \
    && pip install $torch_src -c /opt/petsynth/requirements.lock "torch==${TORCH_VERSION}"

# then every dependency at its locked version (the torch pin is already satisfied)
RUN pip install -r /opt/petsynth/requirements.lock

COPY . /src/petsynth
RUN pip install --no-deps /src/petsynth \
    && pip check \
    && rm -rf /src/petsynth

# Nothing is filled on first use at run time: niworkflows reads TemplateFlow's template
# names from the package (docs/architecture.md, "Templates"); this import checks that it
# writes nothing. The home directory is not needed at run time (the root file system may
# be read-only).
RUN useradd --create-home --uid 1000 --shell /bin/bash petsynth \
    && mkdir -p /work \
    && python -c "import pet_synth_app.interfaces.bids" \
    && python -c "from pet_synth_app.preproc.templates import get_template; \
[get_template(k, r) for k in ('T1w', 'mask', 'GM', 'WM', 'CSF') for r in (1, 2)]" \
    && rm -rf /tmp/.cache /tmp/.petsynth-matplotlib \
    && chmod -R a+rX /opt/petsynth \
    && chmod 1777 /work

USER petsynth
WORKDIR /work
ENTRYPOINT ["petsynth"]
CMD ["--help"]
