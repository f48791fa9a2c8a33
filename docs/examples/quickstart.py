"""Run a small experiment on an embedded LocalCluster and look at its results.

    python docs/examples/quickstart.py [STORE]
"""

import sys

import numpy as np

import panicflow


def main(store: str = "./panicflow-store") -> None:
    config = {
        "name": "quickstart",
        "networks": [["DummyT2I", "DummyI2T"]],
        "seeds": [22, -1],  # -1: a fresh, stored seed per invocation
        "prompts": ["a red balloon over the sea"],
        "embedding_models": ["DummyText", "DummyVision"],
        "max_length": 50,
    }
    # no client: a LocalCluster is started and closed here; pass client=Client(...) to use yours
    experiment_id = panicflow.run_experiment(config, store=store)

    tree = panicflow.open_experiment(experiment_id, store=store)  # xarray DataTree, lazy Zarr
    runs = tree["/"].ds
    print(runs[["network", "seed", "length", "stop_reason", "loop_start", "loop_period"]].to_dataframe())
    print("first captions:", list(runs.text.sel(run=0).values[1:6:2]))

    # embeddings: (run, step, dim), NaN where the model does not apply (images for a text model)
    vectors = tree["embeddings/DummyText"].ds.vector.sel(run=0).values
    print("text vectors of run 0:", int((~np.isnan(vectors).any(axis=1)).sum()))

    # persistence diagrams and entropies per (run, embedding model)
    diagrams = tree["diagrams/DummyText"].ds
    print("entropy H0..H2 of run 0:", diagrams.entropy.sel(run=0).values)
    h1 = diagrams.dimension.sel(run=0).values == 1
    print("H1 bars of run 0:", np.c_[diagrams.birth.sel(run=0).values[h1], diagrams.death.sel(run=0).values[h1]][:3])

    # any output image, from its content hash
    image = panicflow.load_image(runs.output_hash.sel(run=0, step=0).item(), store=store)
    print("step 0 image:", image.size, image.getpixel((0, 0)))

    print(panicflow.experiment_status(experiment_id, store=store))


if __name__ == "__main__":  # LocalCluster starts worker processes: keep the guard
    main(*sys.argv[1:])
