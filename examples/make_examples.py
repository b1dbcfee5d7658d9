"""Regenerates the bundled example checkpoint (run with /usr/bin/python3; needs torch).

examples/tiny_cnn_with_payload.pt is a small CNN's state dict saved by torch.save, with one
extra entry whose unpickling would run `echo` through os.system: the classic pickle payload.
Writing it runs nothing (pickling only records the call); never torch.load it without
weights_only=True. `modelcdr disarm` removes the payload and keeps the weights.
"""
import os
import pathlib

import torch


class Payload:
    def __reduce__(self):
        return (os.system, ("echo 'this would have run on torch.load'",))


def main():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)
    )
    checkpoint = {"state_dict": net.state_dict(), "epoch": 7, "arch": "tiny-cnn", "hook": Payload()}
    out = pathlib.Path(__file__).with_name("tiny_cnn_with_payload.pt")
    torch.save(checkpoint, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
