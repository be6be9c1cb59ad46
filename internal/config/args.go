package config

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// ParseArgs parses the command-line arguments args against the flags defined
// on fs. Unlike [flag.FlagSet.Parse] it does not stop at the first problem: it
// reports every unknown flag (with the closest known flag as a suggestion),
// every missing value and every value the flag's [flag.Value] rejects. fs is
// only the registry: flags are looked up with fs.Lookup and set with fs.Set,
// so [flag.FlagSet.Visit] (and the applyEnv function returned by [Bind]) sees
// the flags that were given.
//
// Accepted forms are -name, --name, -name=value, --name=value, -name value and
// --name value; a boolean flag (one whose Value has an IsBoolFlag method
// returning true) takes no separate value, only --name=false. Arguments that
// are not flags are returned in positional, in order; flags after them are
// still parsed. "--" ends the flags: everything after it is positional.
//
// help is true if -h, -help or --help was given (and fs defines no such flag).
// An unknown flag without "=" takes the next argument as its value unless
// that starts with "-" or the flag it is closest to is a boolean one.
//
// err is nil or joins one error per problem, each starting with the flag as
// written with two dashes, e.g. `--pool-size: invalid value "x": not an
// integer` or "--pool-sise: unknown flag; did you mean --pool-size?". Values of
// secret flags (--upstream) are not repeated in errors.
func ParseArgs(fs *flag.FlagSet, args []string) (positional []string, help bool, err error) {
	var errs []error
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(arg) < 2 || arg[0] != '-' {
			positional = append(positional, arg)
			continue
		}
		body := strings.TrimPrefix(arg[1:], "-")
		name, value, hasValue := strings.Cut(body, "=")
		if name == "" || name[0] == '-' {
			errs = append(errs, fmt.Errorf("%s: bad flag syntax", arg))
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			if name == "h" || name == "help" {
				help = true
				continue
			}
			suggestion, err := unknownFlag(fs, name)
			errs = append(errs, err)
			// "--pool-sise 5": 5 is most likely the misspelt flag's value,
			// not an argument of its own to report as well.
			if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") &&
				(suggestion == nil || !isBoolFlag(suggestion)) {
				i++
			}
			continue
		}
		if !hasValue {
			if isBoolFlag(f) {
				value = "true"
			} else if i+1 < len(args) {
				i++
				value = args[i]
			} else {
				errs = append(errs, fmt.Errorf("--%s: needs a value", name))
				continue
			}
		}
		if err := fs.Set(name, value); err != nil {
			s := lookupSpec(name)
			if s == nil { // a flag of fs that is not in the table
				s = &spec{name: name}
			}
			errs = append(errs, invalidValue(s, "--"+name, value, err))
		}
	}
	return positional, help, errors.Join(errs...)
}

// unknownFlag is the error for --name, which fs does not define, suggesting
// the closest flag fs defines if one is close enough; suggestion is that flag
// or nil.
func unknownFlag(fs *flag.FlagSet, name string) (suggestion *flag.Flag, err error) {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if best := closest(name, names); best != "" {
		return fs.Lookup(best), fmt.Errorf("--%s: unknown flag; did you mean --%s?", name, best)
	}
	return nil, fmt.Errorf("--%s: unknown flag", name)
}

// isBoolFlag reports whether f takes no value (see [flag.Value]).
func isBoolFlag(f *flag.Flag) bool {
	bf, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && bf.IsBoolFlag()
}
