# PetSynth BIDS-App image.
#   CPU (default):  docker build -t petsynth .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cu126 -t petsynth:cuda .
#   run:            docker run --rm -u $(id -u):$(id -g) -v /data/bids:/bids:ro \
#                     -v /data/out:/out petsynth /bids /out participant
# Everything the app needs at run time (templates, atlases, deepbet weights, default model)
# is installed in the image: it runs with --network none.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NO_ET=1 \
    PETSYNTH_CONTAINER=docker \
    HOME=/home/petsynth \
    MPLCONFIGDIR=/home/petsynth/.config/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TEMPLATEFLOW_HOME=/home/petsynth/.cache/templateflow \
    NILEARN_DATA=/home/petsynth/nilearn_data

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the index matching the variant (cpu, cu126, ...)
RUN pip install "torch==${TORCH_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

COPY . /src/petsynth
RUN pip install "torch==${TORCH_VERSION}" /src/petsynth \
    && rm -rf /src/petsynth

# A non-root user; the home and caches are writable by any UID (docker run -u / Apptainer)
RUN useradd --create-home --uid 1000 --shell /bin/bash petsynth \
    && mkdir -p "$MPLCONFIGDIR" "$TEMPLATEFLOW_HOME" "$NILEARN_DATA" /work \
    && python -c "import matplotlib.pyplot" \
    && python -c "from pet_synth_app.preproc.templates import get_template; \
[get_template(k, r) for k in ('T1w', 'mask', 'GM', 'WM', 'CSF') for r in (1, 2)]" \
    && chmod -R a+rwX /home/petsynth /work

USER petsynth
WORKDIR /work
ENTRYPOINT ["petsynth"]
CMD ["--help"]
