"""User stage: each waveform's baseline, the mean of its samples before the trigger (volts)."""
import numpy as np


def baseline(batch, params):
    """Adds table `baseline` (seq, module, volts); with params["max_volts"], keeps only the
    events whose baseline is within +-max_volts on every module (the others are vetoed)."""
    limit = params.get("max_volts")                              # None: keep every event
    keep = np.ones(len(batch), bool)
    for ref in batch.channels(params.get("channel", "IN1")):     # "IN1" -> "rp1.IN1", "rp2.IN1"
        module = ref.split(".")[0]
        here = batch.present(module)                             # events whose part from it arrived
        before = batch.axis(ref).times(batch.waveforms(ref).shape[1]) < 0     # pretrigger samples
        volts = batch.volts(ref)[here][:, before].mean(axis=1)
        batch.add_table("baseline", seq=batch.seq[here], volts=volts,
                        module=np.full(len(volts), batch.modules.index(module), np.uint16))
        if limit is not None:
            keep[here] &= np.abs(volts) <= limit
    return None if limit is None else keep
