"""Data: readers for the folder format and MedMNIST npz, embedded phantoms, the Sample type."""
