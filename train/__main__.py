"""`python -m avemo.train ...` = `avemo train ...`: the entry torchrun starts in every process.

torchrun --standalone --nproc-per-node 2 -m avemo.train --data cache/ --regime colearn --out runs/colearn
"""

from avemo.cli import friendly
from avemo.train.cli import train

if __name__ == "__main__":
    friendly(train)(prog_name="avemo.train")
