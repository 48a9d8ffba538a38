"""MNIST Adder: read a handwritten digit, add a given number to it."""
