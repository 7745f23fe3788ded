package chunkstore

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/restic/chunker"
)

// ConfigVersion is the repository format version written by Init.
const ConfigVersion = 1

// Chunk-size bounds written into new repositories. A content-defined chunker
// with a 64 KiB minimum and 2^17 average bits gives a mean chunk of about
// 190 KiB and a maximum of 1 MiB: an edit inside a large file resends about
// one or two chunks (hundreds of KiB, not megabytes), while /usr-like trees
// still have few enough chunks (one per small file plus one per ~190 KiB) for
// the index to stay small. Most files in an OS tree are below the minimum and
// become exactly one chunk.
const (
	DefaultChunkMin     = 64 << 10
	DefaultChunkAvgBits = 17
	DefaultChunkMax     = 1 << 20
)

// Config is the repository's config file, JSON. It is written once by Init
// and never changed.
type Config struct {
	Version int    `json:"version"`
	ID      string `json:"id"` // 64 hex digits, random
	// Polynomial is the chunker's irreducible polynomial; primary and standby
	// share it for deduplication across hosts.
	Polynomial   chunker.Pol `json:"chunker_polynomial"`
	ChunkMin     uint        `json:"chunk_min"`
	ChunkAvgBits int         `json:"chunk_avg_bits"`
	ChunkMax     uint        `json:"chunk_max"`
	// Compression is the zstd level for new blobs: "fastest", "default" or
	// "better". Blobs record their own compression, so it may differ between
	// repositories replicating to each other.
	Compression string `json:"compression"`
}

func (c *Config) validate() error {
	switch {
	case c.Version != ConfigVersion:
		return fmt.Errorf("repository format version %d is not supported (this understudy reads %d)", c.Version, ConfigVersion)
	case len(c.ID) != 64:
		return fmt.Errorf("repository ID %q is not 64 hex digits", c.ID)
	case !c.Polynomial.Irreducible():
		return fmt.Errorf("chunker polynomial %v is not irreducible", c.Polynomial)
	case c.ChunkMin < 4096 || c.ChunkMax > MaxDataBlob || c.ChunkMin >= c.ChunkMax:
		return fmt.Errorf("chunk bounds %d..%d are out of range", c.ChunkMin, c.ChunkMax)
	case c.ChunkAvgBits < 12 || c.ChunkAvgBits > 23:
		return fmt.Errorf("chunk average bits %d out of range", c.ChunkAvgBits)
	}
	if _, err := encoderLevel(c.Compression); err != nil {
		return err
	}
	if _, err := hex.DecodeString(c.ID); err != nil {
		return fmt.Errorf("repository ID %q: %w", c.ID, err)
	}
	return nil
}

// InitOptions tune a new repository. Zero values take the defaults.
type InitOptions struct {
	Polynomial  chunker.Pol // share a peer's polynomial (init --from)
	Compression string
}

// ErrNotEmpty is returned by Init for a directory that already holds files.
var ErrNotEmpty = errors.New("directory is not empty")

// Init creates a new repository in dir, which must not exist or be empty.
func Init(dir string, opts InitOptions) (*Config, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	names, err := d.Readdirnames(1)
	d.Close()
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	if len(names) > 0 {
		return nil, fmt.Errorf("create repository in %s: %w (found %q); choose an empty or new directory", dir, ErrNotEmpty, names[0])
	}
	cfg := Config{
		Version:      ConfigVersion,
		Polynomial:   opts.Polynomial,
		ChunkMin:     DefaultChunkMin,
		ChunkAvgBits: DefaultChunkAvgBits,
		ChunkMax:     DefaultChunkMax,
		Compression:  opts.Compression,
	}
	if cfg.Compression == "" {
		cfg.Compression = "default"
	}
	var id [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	cfg.ID = hex.EncodeToString(id[:])
	if cfg.Polynomial == 0 {
		if cfg.Polynomial, err = chunker.RandomPolynomial(); err != nil {
			return nil, fmt.Errorf("choose chunker polynomial: %w", err)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "packs", "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	data, err := json.MarshalIndent(&cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, "config"), append(data, '\n')); err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	return &cfg, nil
}

// maxConfigSize bounds the config file; a real one is a few hundred bytes.
const maxConfigSize = 64 << 10

func readConfig(dir string) (*Config, error) {
	name := filepath.Join(dir, "config")
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s is not an understudy repository (no config file); create one with `understudy init`", dir)
		}
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxConfigSize)
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &cfg, nil
}

// writeFileAtomic writes data to name through a temporary file that is
// fsynced and renamed into place, then fsyncs the directory.
func writeFileAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	return syncDir(filepath.Dir(name))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
